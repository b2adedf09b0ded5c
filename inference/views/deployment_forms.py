from __future__ import annotations

import json
from typing import Any

from django import forms

from inference.engine_args import ALLOWED
from inference.models import Deployment, ModelSource, Runner
from inference.services.deployments import NO_REPLICAS_MESSAGE

# The service says why too; the form's own bound keeps the browser from offering 0.
MAX_REPLICAS_ERRORS = {"min_value": NO_REPLICAS_MESSAGE.format(field="max_replicas")}


class DeploymentForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="Lowercase letters, digits and hyphens.")
    served_model_name = forms.CharField(
        max_length=128,
        required=False,
        help_text="The name clients pass as `model`. Empty: the deployment's name.",
    )
    source = forms.ChoiceField(choices=ModelSource.choices, initial=ModelSource.HUGGINGFACE)
    model = forms.CharField(
        max_length=500,
        help_text="owner/name on Hugging Face, or an absolute directory the operator allows.",
    )
    revision = forms.CharField(
        max_length=100, required=False, help_text="Branch, tag or commit (Hugging Face only)."
    )
    runner = forms.ChoiceField(choices=Runner.choices, initial=Runner.GENERATE)
    engine_args = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"max_model_len": 4096}'}),
        help_text="A JSON object. Allowed keys: " + ", ".join(sorted(ALLOWED)) + ".",
    )
    gpus_per_replica = forms.IntegerField(
        label="GPUs per replica", min_value=0, max_value=8, initial=1
    )
    min_replicas = forms.IntegerField(
        min_value=0, initial=1, help_text="0 lets the deployment scale to zero when idle."
    )
    max_replicas = forms.IntegerField(min_value=1, initial=1, error_messages=MAX_REPLICAS_ERRORS)
    target_concurrency = forms.IntegerField(
        min_value=1, initial=8, help_text="Requests one replica should carry before adding one."
    )
    scale_down_delay_s = forms.IntegerField(min_value=0, initial=300, label="Scale-down delay (s)")

    def clean_engine_args(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("engine_args") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"Not valid JSON: {error.msg}.") from None
        except RecursionError:
            raise forms.ValidationError("This JSON is nested too deeply.") from None
        except ValueError:
            # Python refuses to convert an integer of more than 4300 digits.
            raise forms.ValidationError("A number in this JSON has too many digits.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Write a JSON object, like {"max_model_len": 4096}.')
        return value

    @classmethod
    def initial_from(cls, deployment: Deployment) -> dict[str, Any]:
        initial = {name: getattr(deployment, name) for name in cls.base_fields}
        args = deployment.engine_args
        initial["engine_args"] = json.dumps(args) if args else ""
        return initial


class ScaleForm(forms.Form):
    min_replicas = forms.IntegerField(min_value=0)
    max_replicas = forms.IntegerField(min_value=1, error_messages=MAX_REPLICAS_ERRORS)

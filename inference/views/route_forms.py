"""Forms for the routes page. The services validate the route graph; these check the shape."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from inference.models import RoutePolicy

CONFIG_HELP = (
    'JSON. single: {"target": "deployment:NAME"}; weighted: {"targets": [{"target": '
    '"deployment:a", "weight": 90}, {"target": "deployment:b", "weight": 10}]}; fallback: '
    '{"targets": ["deployment:a", "external:b"]}; conditional: {"rules": [{"when": '
    '{"prompt_tokens_min": 1000}, "target": "deployment:long"}], "default": "deployment:a"}; '
    'auto: {"targets": ["deployment:cheap", "external:strong"]} with a strong share or a '
    "threshold below."
)


class RouteForm(forms.Form):
    name = forms.CharField(max_length=128, help_text="The model name clients will send.")
    description = forms.CharField(max_length=200, required=False)
    policy = forms.ChoiceField(choices=RoutePolicy.choices)
    config = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}), help_text=CONFIG_HELP
    )
    cold_start_fallback = forms.CharField(
        max_length=200,
        required=False,
        help_text="Optional target used while a scaled-to-zero deployment starts.",
    )

    # The auto policy's trade-off, merged into config (either one; a strong share wins).
    max_strong_percent = forms.IntegerField(
        min_value=0,
        max_value=100,
        required=False,
        help_text="Auto policy: send at most this % of requests to the strongest target; the "
        "threshold is calibrated on the route's recent traffic.",
    )
    threshold = forms.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        help_text="Auto policy, two targets: or set the threshold yourself (0 to 1; requests "
        "scoring at least this go to the cheaper target).",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        share = cleaned.pop("max_strong_percent", None)
        threshold = cleaned.pop("threshold", None)
        config = cleaned.get("config")
        if cleaned.get("policy") == "auto" and isinstance(config, dict):
            config = dict(config)
            if share is not None:
                config["max_strong_percent"] = share
            elif threshold is not None:
                config.pop("max_strong_percent", None)
                config.pop("calibration", None)
                config.pop("thresholds", None)
                config["threshold"] = threshold
            cleaned["config"] = config
        return cleaned

    def clean_config(self) -> Any:
        raw = self.cleaned_data["config"]
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise forms.ValidationError(f"This is not valid JSON: {error}.") from None
        except RecursionError:
            raise forms.ValidationError("This JSON is nested too deeply.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Write a JSON object, e.g. {"target": "deployment:x"}.')
        return value


class EndpointForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="Targets refer to it as external:NAME.")
    base_url = forms.CharField(max_length=300, help_text="e.g. https://api.example.com/v1")
    model = forms.CharField(max_length=128, help_text="The model name that endpoint expects.")
    api_key = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; never shown again.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # It shares the routes page with the route form: ids of its own, so labels find it.
        kwargs.setdefault("auto_id", "endpoint_%s")
        super().__init__(*args, **kwargs)


class EndpointEditForm(forms.Form):
    base_url = forms.CharField(max_length=300, help_text="e.g. https://api.example.com/v1")
    model = forms.CharField(max_length=128, help_text="The model name that endpoint expects.")
    api_key = forms.CharField(
        label="New API key",
        required=False,
        max_length=500,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to keep the stored key. Stored encrypted; never shown again.",
    )
    clear_api_key = forms.BooleanField(
        label="Remove the stored API key", required=False, help_text="Send requests without one."
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("api_key") and cleaned.get("clear_api_key"):
            raise forms.ValidationError("Give a new API key or remove the stored one, not both.")
        return cleaned


class TryForm(forms.Form):
    model = forms.ChoiceField(choices=())
    prompt = forms.CharField(
        max_length=8000, widget=forms.Textarea(attrs={"rows": 3}), initial="Say hello."
    )
    max_tokens = forms.IntegerField(min_value=1, max_value=1024, initial=64)

    def __init__(self, *args: Any, models: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "try_%s")  # on the routes page, like the endpoint form
        super().__init__(*args, **kwargs)
        field = self.fields["model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(m, m) for m in models]

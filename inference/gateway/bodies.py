"""Parse and check OpenAI request bodies before anything reaches an upstream.

Only the fields the gateway relies on, or that would confuse an engine when mistyped, are checked
here; everything else passes through to the engine, which validates the rest and answers 400 in
the same error format. Responses API bodies (``/v1/responses``) are also refused when they ask
for state kept between requests, which a gateway balancing over replicas cannot offer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from inference.gateway.errors import GatewayError
from inference.routing.resolve import RequestFeatures

CHAT = "chat"
COMPLETION = "completion"
EMBEDDING = "embedding"
RESPONSES = "responses"

_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_INTS = ("n", "seed", "top_k", "top_logprobs", "best_of")
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_INPUT_ROLES = {"system", "developer", "user", "assistant"}
# Responses API parameters that need the previous response or a conversation to be stored and
# found again, by whichever replica serves the next request.
_STATEFUL = {
    "previous_response_id": "continue a previous response",
    "conversation": "add to a stored conversation",
}
_NOT_STORED = (
    "Responses are not stored here: requests are served statelessly by any replica of the model"
)
# Rough tokens-per-character for English text; routing rules and TPM use this estimate.
CHARS_PER_TOKEN = 4
# Tokens a chat template may write around the tool definitions it puts in the prompt (how to
# call them, in what format): some templates spend well over a hundred.
TOOLS_TEMPLATE_TOKENS = 256


# Completion tokens an answer of the legacy completions API gets when the request sets no
# max_tokens.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(slots=True)
class ParsedRequest:
    kind: str
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    # The completion tokens the request may generate in all (max_tokens for each answer it asks
    # for), or None when it sets no bound.
    max_tokens: int | None
    prompt_tokens_estimate: int
    # An upper bound on prompt tokens for byte-level tokenizers (never more tokens than bytes),
    # so that a budget reservation covers the real cost.
    prompt_tokens_bound: int
    affinity_text: str
    features: RequestFeatures
    # How many answers the engine generates: ``n``, times the number of prompts in a legacy
    # completions request (each prompt gets its own ``n``).
    sequences: int = 1


# A \uD800-\uDFFF escape: half of a UTF-16 pair. JSON.stringify writes a lone one for a string
# cut through an emoji; the decoder keeps it as a code point that cannot be encoded again.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_no_lone_surrogates(raw: bytes, body: object) -> None:
    """Refuse a body holding half a UTF-16 pair: no engine can take it. Only bodies that escape
    such code points at all pay for the full check (a re-encoding of the body)."""
    if _SURROGATE_ESCAPE.search(raw) is None:
        return
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as error:
        half = error.object[error.start : error.end].encode("unicode_escape").decode()
        raise _bad(
            f"The body is not valid JSON text: it holds half of a UTF-16 surrogate pair ({half}), "
            "as a string cut through an emoji does. Send whole characters.",
            code="invalid_json",
        ) from None


def _bad(message: str, param: str | None = None, code: str = "invalid_body") -> GatewayError:
    return GatewayError(400, message, code, param=param)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


def _text_of_content(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"{where}[{i}] must be an object with a 'type'.", where)
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
        return "".join(parts)
    raise _bad(f"{where} must be a string or a list of content parts.", where)


def _chat_text(body: dict[str, Any]) -> tuple[str, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list.", "messages")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object.", "messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad(
                f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}.", "messages"
            )
        texts.append(role)
        texts.append(_text_of_content(message.get("content"), f"messages[{i}].content"))
    # A few template tokens per message on top of the text.
    return "\n".join(texts), 4 * len(messages)


def _prompt_text(value: object, name: str) -> tuple[str, int, int]:
    """Text (or token count) of a completions prompt or an embeddings input, and how many
    prompts or inputs it holds."""
    if isinstance(value, str):
        return value, 0, 1
    if _is_token_list(value):
        return "", len(value), 1  # type: ignore[arg-type]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return "\n".join(value), 0, len(value)
        if all(_is_token_list(v) for v in value):
            return "", sum(len(v) for v in value), len(value)
    raise _bad(f"'{name}' must be a string, a list of strings, or a list of token ids.", name)


def request_parse(
    kind: str, raw: bytes, *, tag: str | None = None, affinity_chars: int = 256
) -> ParsedRequest:
    """Parse a body or raise GatewayError(400) saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad(f"The body is not valid JSON: {error}.", code="invalid_json") from None
    except RecursionError:
        raise _bad(
            "The body is not valid JSON: it is nested too deeply.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise _bad("The body must be a JSON object.")
    _check_no_lone_surrogates(raw, body)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise _bad("'model' must be a non-empty string.", "model")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false.", "stream")
    options = body.get("stream_options")
    include_usage = continuous = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object.", "stream_options")
        include_usage = options.get("include_usage") is True
        continuous = options.get("continuous_usage_stats") is True
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and not _is_number(value):
            raise _bad(f"'{name}' must be a number.", name)
    for name in _INTS:
        value = body.get(name)
        if value is not None and not _is_int(value):
            raise _bad(f"'{name}' must be a whole number.", name)
    # Chat asks for log probabilities with true/false (and how many with top_logprobs); the
    # legacy completions API gives the number of alternatives in logprobs itself.
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if kind == COMPLETION and not _is_int(logprobs):
            raise _bad("'logprobs' must be a whole number.", "logprobs")
        if kind == CHAT and not isinstance(logprobs, bool):
            raise _bad("'logprobs' must be true or false.", "logprobs")
    if kind == RESPONSES:
        return _responses_parse(body, model, stream, tag, affinity_chars)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 0):
            raise _bad(f"'{name}' must be a whole number of at least 0.", name)
    # The bound the engine applies: in a chat request max_completion_tokens wherever it is set
    # (max_tokens is its deprecated name), in a legacy completions request max_tokens alone
    # (that API has no max_completion_tokens; engines ignore it there).
    max_tokens = body.get("max_tokens")
    if kind == CHAT and body.get("max_completion_tokens") is not None:
        max_tokens = body["max_completion_tokens"]
    elif kind == COMPLETION and "max_tokens" not in body:
        # The completions API's own default, OpenAI's and vLLM's alike (an explicit null asks
        # for the rest of the context instead).
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be a list.", "tools")
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise _bad("'response_format' must be an object.", "response_format")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("'stop' must be a string or a list of strings.", "stop")

    prompts = 1
    if kind == CHAT:
        text, extra_tokens = _chat_text(body)
    elif kind == COMPLETION:
        text, extra_tokens, prompts = _prompt_text(body.get("prompt"), "prompt")
    else:
        text, extra_tokens, _ = _prompt_text(body.get("input"), "input")
        if stream:
            raise _bad("Embeddings cannot be streamed.", "stream")

    sequences = max(1, body.get("n") or 1) * prompts
    return _parsed(
        kind,
        body,
        model,
        stream,
        text,
        extra_tokens,
        max_tokens=max_tokens,
        total_max_tokens=None if max_tokens is None else max_tokens * sequences,
        tools=tools if kind == CHAT else None,
        has_response_format=response_format is not None,
        tag=tag,
        affinity_chars=affinity_chars,
        include_usage=include_usage,
        continuous_usage=continuous,
        sequences=sequences,
    )


def _parsed(
    kind: str,
    body: dict[str, Any],
    model: str,
    stream: bool,
    text: str,
    extra_tokens: int,
    *,
    max_tokens: int | None,
    total_max_tokens: int | None,
    tools: list[Any] | None,
    has_response_format: bool,
    tag: str | None,
    affinity_chars: int,
    include_usage: bool = False,
    continuous_usage: bool = False,
    sequences: int = 1,
) -> ParsedRequest:
    """A checked body with its prompt's text: the token estimate and bound, what routing rules
    look at, the affinity key. Tool definitions are part of the prompt too: the chat template
    writes them in as JSON (often indented four spaces a level), with its own words around."""
    tools_chars = tools_bytes = 0
    if tools:
        written = json.dumps(tools, ensure_ascii=False, indent=4)
        tools_chars = len(written)
        tools_bytes = len(written.encode()) + TOOLS_TEMPLATE_TOKENS
    estimate = (len(text) + tools_chars) // CHARS_PER_TOKEN + extra_tokens + 1
    features = RequestFeatures(
        prompt_tokens=estimate,
        max_tokens=max_tokens,
        has_tools=bool(tools),
        has_response_format=has_response_format,
        tag=tag,
        prompt_text=text,
    )
    return ParsedRequest(
        kind=kind,
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        max_tokens=total_max_tokens,
        prompt_tokens_estimate=estimate,
        prompt_tokens_bound=len(text.encode()) + tools_bytes + extra_tokens + 16,
        affinity_text=text[:affinity_chars],
        features=features,
        sequences=sequences,
    )


def _responses_input_text(body: dict[str, Any]) -> tuple[str, int]:
    """Text of a Responses API prompt (instructions, then each input item's role and text) and
    the template tokens on top, checking the input's shape on the way."""
    texts = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string.", "instructions")
        texts.append(instructions)
    value = body.get("input")
    if isinstance(value, str):
        texts.append(value)
        return "\n".join(texts), 4
    if not isinstance(value, list):
        raise _bad("'input' must be a string or a list of input items.", "input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad(f"input[{i}] must be an object.", "input")
        kind = item.get("type")
        if kind is None or kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in _INPUT_ROLES:
                raise _bad(
                    f"input[{i}].role must be one of {', '.join(sorted(_INPUT_ROLES))}.", "input"
                )
            content = item.get("content")
            where = f"input[{i}].content"
            if content is None:
                raise _bad(f"{where} must be a string or a list of content parts.", where)
            texts.append(role)
            texts.append(_text_of_content(content, where))
        elif not isinstance(kind, str):
            raise _bad(f"input[{i}].type must be a string.", "input")
        elif kind == "item_reference":
            raise _bad(
                f"input[{i}] refers to a stored item. {_NOT_STORED}; send the item itself.",
                "input",
            )
        else:
            # Tool calls and their outputs are part of the prompt too.
            for name in ("arguments", "output"):
                text = item.get(name)
                if isinstance(text, str):
                    texts.append(text)
    return "\n".join(texts), 4 * len(value)


def _responses_parse(
    body: dict[str, Any], model: str, stream: bool, tag: str | None, affinity_chars: int
) -> ParsedRequest:
    """The Responses API's body: ``input`` (and ``instructions``) for the prompt,
    ``max_output_tokens`` for the answer's bound, ``text.format`` for the response format."""
    for name, what in _STATEFUL.items():
        if body.get(name) is not None:
            raise _bad(
                f"'{name}' is not supported: {_NOT_STORED}, so they cannot {what}. "
                "Send the whole conversation in 'input' instead.",
                name,
            )
    for name in ("background", "store"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise _bad(f"'{name}' must be true or false.", name)
    if body.get("background") is True:
        raise _bad(
            f"'background' is not supported: {_NOT_STORED}, so a background response could "
            "not be fetched later. Stream the response instead.",
            "background",
        )
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise _bad("'max_output_tokens' must be a whole number of at least 1.", "max_output_tokens")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be a list.", "tools")
    text_options = body.get("text")
    if text_options is not None and not isinstance(text_options, dict):
        raise _bad("'text' must be an object.", "text")
    response_format = text_options.get("format") if text_options else None
    if response_format is not None and not isinstance(response_format, dict):
        raise _bad("'text.format' must be an object.", "text")
    text, extra_tokens = _responses_input_text(body)
    return _parsed(
        RESPONSES,
        body,
        model,
        stream,
        text,
        extra_tokens,
        max_tokens=max_tokens,
        total_max_tokens=max_tokens,
        tools=tools,
        has_response_format=response_format is not None,
        tag=tag,
        affinity_chars=affinity_chars,
    )

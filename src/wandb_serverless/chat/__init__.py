"""The chat protocol, once, for every adapter, with no recording in it: the parameter table
(``params``), requests and their checks (``protocol``), responses and streams parsed into turns
(``parse``), and the transport (``transport``). ``wandb_serverless.calls`` is the layer above:
it posts, parses once and hands each turn to the rollout recorder."""

from wandb_serverless.chat.parse import (
    Completion,
    Delta,
    StreamAccumulator,
    StreamParser,
    ToolCall,
    ToolCallDelta,
    Usage,
    as_dict,
    parse_completion,
)
from wandb_serverless.chat.protocol import (
    CUT_OFF,
    LengthLimitError,
    SamplingFields,
    build_request,
    check_finish,
    is_structured,
    json_schema_format,
    parse_arguments,
    tool_choice_to_openai,
)
from wandb_serverless.chat.transport import name_endpoint, post

__all__ = [
    "CUT_OFF",
    "Completion",
    "Delta",
    "LengthLimitError",
    "SamplingFields",
    "StreamAccumulator",
    "StreamParser",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "as_dict",
    "build_request",
    "check_finish",
    "is_structured",
    "json_schema_format",
    "name_endpoint",
    "parse_arguments",
    "parse_completion",
    "post",
    "tool_choice_to_openai",
]

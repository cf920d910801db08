"""Prompting and agents (chapter 12).

Prompt templates and few-shot prompts (:mod:`.prompts`), chain-of-thought answer extraction
and self-consistency (:mod:`.reasoning`), the model interface (:mod:`.models`), function
calling with JSON-Schema validation (:mod:`.tools`), a safe calculator (:mod:`.calculator`),
retrieval as a tool (:mod:`.retrieval_tool`), a ReAct loop (:mod:`.react`) and
prompt-injection helpers (:mod:`.injection`).
"""

from .calculator import CalculatorError, calculator_tool, format_number, safe_eval
from .injection import (
    INJECTION_PATTERNS,
    UNTRUSTED_NOTICE,
    InjectionReport,
    detect_injection,
    filter_instructions,
    make_defence,
    neutralize_markers,
    wrap_untrusted,
)
from .models import CallableChatModel, ChatModel, GPTChatModel, as_chat_model, truncate_at_stop
from .prompts import FewShotPrompt, PromptTemplate, PromptTemplateError, format_prompt
from .react import (
    REACT_TEMPLATE,
    AgentEvaluation,
    AgentResult,
    AgentStep,
    AgentTask,
    ReActAgent,
    evaluate_agent,
    final_answer,
)
from .reasoning import (
    COT_SUFFIX,
    VoteResult,
    extract_answer,
    majority_vote,
    normalize_answer,
    self_consistency,
)
from .retrieval_tool import format_passages, retrieval_tool
from .tools import (
    Tool,
    ToolCall,
    ToolCallError,
    ToolRegistry,
    ToolResult,
    find_json_object,
    parse_tool_call,
)

__all__ = [
    "PromptTemplate",
    "PromptTemplateError",
    "format_prompt",
    "FewShotPrompt",
    "COT_SUFFIX",
    "extract_answer",
    "normalize_answer",
    "majority_vote",
    "VoteResult",
    "self_consistency",
    "ChatModel",
    "CallableChatModel",
    "GPTChatModel",
    "as_chat_model",
    "truncate_at_stop",
    "Tool",
    "ToolCall",
    "ToolResult",
    "ToolRegistry",
    "ToolCallError",
    "parse_tool_call",
    "find_json_object",
    "CalculatorError",
    "safe_eval",
    "calculator_tool",
    "format_number",
    "retrieval_tool",
    "format_passages",
    "REACT_TEMPLATE",
    "final_answer",
    "AgentStep",
    "AgentResult",
    "ReActAgent",
    "AgentTask",
    "AgentEvaluation",
    "evaluate_agent",
    "INJECTION_PATTERNS",
    "UNTRUSTED_NOTICE",
    "InjectionReport",
    "detect_injection",
    "filter_instructions",
    "wrap_untrusted",
    "neutralize_markers",
    "make_defence",
]

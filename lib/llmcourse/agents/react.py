"""A ReAct-style agent: the model alternates Thought / Action, the system adds Observation.

Each step the model sees the prompt plus the transcript so far and writes::

    Thought: I need the product first.
    Action: {"name": "calculator", "arguments": {"expression": "17 * 23"}}

The agent cuts the output at any ``Observation:`` the model invents, runs the tool call
(validated against its JSON Schema), appends ``Observation: <result>`` and asks again. It
stops when the output holds ``Final Answer: ...`` (see :func:`final_answer`), after
``max_steps`` model calls, or when the model repeats the same tool call ``repeat_limit``
times in a row. Malformed actions and tool errors become observations the model can react to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .models import ChatModel, as_chat_model, truncate_at_stop
from .prompts import PromptTemplate
from .reasoning import normalize_answer
from .tools import ToolCall, ToolCallError, ToolRegistry, parse_tool_call

__all__ = [
    "REACT_TEMPLATE",
    "final_answer",
    "AgentStep",
    "AgentResult",
    "ReActAgent",
    "AgentTask",
    "AgentEvaluation",
    "evaluate_agent",
]

REACT_TEMPLATE = """Answer the question. You can use these tools:
{tools}

Use this format:
Thought: think about what to do next
Action: {{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}
Observation: the tool's result (written for you by the system)
... (Thought, Action and Observation may repeat)
Thought: I know the answer
Final Answer: the answer
{notice}
Question: {question}
"""

_FINAL = re.compile(r"^[ \t]*Final Answer[ \t]*:", re.IGNORECASE | re.MULTILINE)
_ACTION = re.compile(r"^[ \t]*Action[ \t]*:", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(r"^\s*Thought\s*:\s*", re.IGNORECASE)
_NEXT_MARKER = re.compile(r"\n[ \t]*(Thought|Action|Observation|Question)[ \t]*:", re.IGNORECASE)
_OBSERVATION_STOP = ["\nObservation:", "Observation:"]


def final_answer(text: str) -> str | None:
    """The stop condition: the answer after a line starting ``Final Answer:``, else None.

    Only a ``Final Answer:`` that comes before any ``Action:`` counts (a model that acts
    first must wait for the observation). The answer runs to the end of the text or to the
    next line that opens another step (``Thought:``, ``Observation:``, ``Question:``...).
    """
    final = _FINAL.search(text)
    if final is None:
        return None
    action = _ACTION.search(text)
    if action is not None and action.start() < final.start():
        return None
    rest = text[final.end() :]
    end = _NEXT_MARKER.search(rest)
    return (rest[: end.start()] if end else rest).strip()


@dataclass(frozen=True)
class AgentStep:
    """One model call: its ``thought``, the parsed ``action`` (or None), the ``observation``
    returned to the model (None on the final step), the raw ``output``, and whether the step
    was an ``error`` (unparsable output, invalid arguments or failing tool)."""

    thought: str
    action: ToolCall | None
    observation: str | None
    output: str
    error: bool = False


@dataclass
class AgentResult:
    """The outcome of :meth:`ReActAgent.run`.

    ``stop_reason`` is ``"final_answer"``, ``"max_steps"`` or ``"repeated_action"``;
    ``answer`` is None unless the model gave a final answer.
    """

    answer: str | None
    steps: list[AgentStep]
    stop_reason: str
    transcript: str

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def n_tool_calls(self) -> int:
        return sum(1 for s in self.steps if s.action is not None)


class ReActAgent:
    """Thought/Action/Observation loop over a :class:`ToolRegistry`.

    Args:
        model: a :class:`ChatModel` or any callable ``str -> str``.
        tools: the registry of tools the model may call.
        max_steps: most model calls per question (a step is one call).
        repeat_limit: stop when the same tool call (name and arguments) is made this many
            times in a row (None: never).
        template: the prompt; ``{question}`` is required, ``{tools}`` (the tool list) and
            ``{notice}`` (see below) are filled when present.
        notice: extra system text, e.g. ``UNTRUSTED_NOTICE`` from the injection module.
        max_observation_chars: longer observations are cut (keeps the context small).
    """

    def __init__(
        self,
        model: ChatModel | Callable[[str], str],
        tools: ToolRegistry,
        *,
        max_steps: int = 6,
        repeat_limit: int | None = 3,
        template: str = REACT_TEMPLATE,
        notice: str = "",
        max_observation_chars: int = 1000,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if repeat_limit is not None and repeat_limit < 2:
            raise ValueError(f"repeat_limit must be >= 2 or None, got {repeat_limit}")
        self.model = as_chat_model(model)
        self.tools = tools
        self.max_steps, self.repeat_limit = max_steps, repeat_limit
        self.template = PromptTemplate(template, strict=False)
        if "question" not in self.template.fields:
            raise ValueError("the agent template needs a {question} field (and usually {tools})")
        self.notice, self.max_observation_chars = notice, max_observation_chars

    def prompt(self, question: str) -> str:
        """The initial prompt for ``question``."""
        notice = f"\n{self.notice}\n" if self.notice else ""
        return self.template.format(tools=self.tools.describe(), question=question, notice=notice)

    def _act(self, text: str) -> tuple[ToolCall | None, str, bool]:
        """Parse and run the action in ``text``: (call or None, observation, error?)."""
        action = _ACTION.search(text)
        if action is None:
            return (
                None,
                'Error: no Action and no Final Answer found. Write Action: {"name": ..., "arguments": {...}} or Final Answer: ...',
                True,
            )
        try:
            call = parse_tool_call(text[action.end() :])
        except ToolCallError as err:
            return None, f"Error: {err}", True
        result = self.tools.call(call)
        content = result.content
        if len(content) > self.max_observation_chars:
            content = content[: self.max_observation_chars] + " ...[truncated]"
        return call, content, not result.ok

    def run(self, question: str) -> AgentResult:
        """Answer ``question``; returns the answer, every step and why the loop stopped."""
        transcript = self.prompt(question)
        steps: list[AgentStep] = []
        repeats = 0
        for _ in range(self.max_steps):
            raw = self.model.complete(transcript + "Thought:", stop=_OBSERVATION_STOP)
            output = "Thought:" + truncate_at_stop(raw, _OBSERVATION_STOP).rstrip()
            answer = final_answer(output)
            cut = _FINAL.search(output) if answer is not None else _ACTION.search(output)
            thought = _THOUGHT.sub("", output[: cut.start()] if cut else output, count=1).strip()
            if answer is not None:
                steps.append(AgentStep(thought, None, None, output))
                return AgentResult(answer, steps, "final_answer", transcript + output + "\n")
            call, observation, error = self._act(output)
            steps.append(AgentStep(thought, call, observation, output, error))
            transcript += f"{output}\nObservation: {observation}\n"
            prev = steps[-2].action if len(steps) > 1 else None
            repeats = (
                repeats + 1 if call is not None and call == prev else (1 if call is not None else 0)
            )
            if self.repeat_limit is not None and repeats >= self.repeat_limit:
                return AgentResult(None, steps, "repeated_action", transcript)
        return AgentResult(None, steps, "max_steps", transcript)


@dataclass(frozen=True)
class AgentTask:
    """A question with a way to judge the agent's answer.

    ``expected`` is compared after :func:`~llmcourse.agents.reasoning.normalize_answer`
    (so ``"42"`` matches ``"42.0"``); ``check`` (answer -> bool) overrides it.
    """

    question: str
    expected: str | None = None
    check: Callable[[str | None], bool] | None = None

    def is_correct(self, answer: str | None) -> bool:
        if self.check is not None:
            return bool(self.check(answer))
        if self.expected is None:
            raise ValueError(f"task {self.question!r} has neither expected nor check")
        return answer is not None and normalize_answer(answer) == normalize_answer(self.expected)


@dataclass
class AgentEvaluation:
    """Success rate and step counts of an agent over a task set."""

    success_rate: float
    mean_steps: float
    mean_tool_calls: float
    stop_reasons: dict[str, int]
    results: list[AgentResult] = field(repr=False)
    correct: list[bool] = field(repr=False)


def evaluate_agent(agent: ReActAgent, tasks: Sequence[AgentTask]) -> AgentEvaluation:
    """Run ``agent`` on every task; success = answer judged correct by the task."""
    if not tasks:
        raise ValueError("no tasks to evaluate")
    results = [agent.run(t.question) for t in tasks]
    correct = [t.is_correct(r.answer) for t, r in zip(tasks, results, strict=True)]
    reasons: dict[str, int] = {}
    for r in results:
        reasons[r.stop_reason] = reasons.get(r.stop_reason, 0) + 1
    n = len(tasks)
    return AgentEvaluation(
        success_rate=sum(correct) / n,
        mean_steps=sum(r.n_steps for r in results) / n,
        mean_tool_calls=sum(r.n_tool_calls for r in results) / n,
        stop_reasons=reasons,
        results=results,
        correct=correct,
    )

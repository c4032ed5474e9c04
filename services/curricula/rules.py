"""The rule language: safe expressions over named metrics, parsed once, evaluated many times.

A rule is a Python-like boolean expression, for instance::

    accuracy(window=200) >= 0.8 and sessions_at_stage >= 2
    mean(finished_trials[-5:]) >= 500 and not (session_total < 10)
    sum(peak_dprime[-3:] > 2) >= 2 and 0.1 < response_bias < 0.9

It is parsed with :mod:`ast` and translated into a small tree of evaluator nodes; nothing is
ever handed to ``eval`` or ``exec``, and every construct outside the whitelist below is
rejected when the curriculum is loaded, with the column where it starts.

What an expression may contain:

- numbers; ``True``/``False``; a quoted string only as a policy's whole value;
- metric names from the registry (see :mod:`shaping.services.domain.metrics`): a counter by name
  (``session_total``), or called with its keyword arguments (``session_count(stage="in
  training")``); a session metric by name (the judged session's value), by a negative
  index (``finished_trials[-2]``: the session before) or by a slice of recent sessions
  (``finished_trials[-5:]``, only inside an aggregate); a trial metric called with its window
  (``accuracy(window=200)``); a window metric called with ``sessions=k`` or ``dates=k`` and
  its other arguments (``psych_bias(dates=3, block=0.2)``); a window-series metric the same
  way, inside an aggregate (``all(window_perf_easy(dates=3) > 0.9)``). Argument values are
  constants: numbers, quoted strings, ``True``/``False``; each metric's arguments are checked
  against the registry when the curriculum loads;
- the curriculum's named ``conditions`` (a boolean expression defined once, used by name in
  rules, warnings, reports and later conditions);
- in a policy's expressions, the stage's parameter names (their current values);
- ``+ - * /``, unary minus, ``abs(x)``, ``min(a, b, ...)``, ``max(a, b, ...)``;
- comparisons ``< <= > >= == !=``, chained ones (``0.1 < x < 0.9``), and inside an aggregate
  a session slice (or window series) compared with a number, which counts (``sum(x[-3:] >
  2)``), averages (``mean(x[-3:] > 2)``) or quantifies (``all(...)``, ``any(...)``, as numpy's
  ``all``/``any``: ``all`` of nothing holds, ``any`` of nothing does not) the sessions where
  it holds;
- ``and``, ``or``, ``not``, parentheses.

Semantics (those of the AIND auto-train engine, so its curricula keep their meaning): a missing
value (no session yet, NaN, a session that reported nothing) is NaN; arithmetic with NaN gives
NaN; any comparison with NaN is false; ``mean`` of an empty slice is NaN; ``mean`` and ``sum``
add in numpy's pairwise order, so a boundary case decides as ``np.mean`` does.

Each comparison yields an :class:`~schemas.events.Observation` (the metric side's text, its
value, the comparator, the threshold, whether it held) for the evidence in StageTransitioned;
a comparison of two metric expressions is recorded as their difference against 0; a nested
``and``/``or``/``not`` is also recorded, with its text as the metric and 1.0/0.0 as the value.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shaping.schemas.events import Observation, ParamValue
from shaping.services.curricula.errors import RuleSyntaxError
from shaping.services.domain.curriculum import MetricSource
from shaping.services.domain.metrics import MetricDefinition, MetricRegistry
from shaping.services.domain.state import MAX_SESSION_HISTORY

Kind = Literal["bool", "number", "series", "mask", "text"]
NAN = math.nan

AGGREGATES = ("mean", "min", "max", "sum", "len")
QUANTIFIERS = ("all", "any")
FUNCTIONS = (*AGGREGATES, *QUANTIFIERS, "abs")

_COMPARATORS: dict[type[ast.cmpop], tuple[str, Callable[[float, float], bool]]] = {
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_ARITHMETIC: dict[type[ast.operator], tuple[str, Callable[[float, float], float]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", lambda a, b: a / b if b != 0 else NAN),
}
_CONSTRUCT_NAMES = {
    ast.Attribute: "attribute access (a.b)",
    ast.Lambda: "lambda",
    ast.IfExp: "conditional expression (a if c else b)",
    ast.ListComp: "list comprehension",
    ast.GeneratorExp: "generator expression",
    ast.DictComp: "dict comprehension",
    ast.SetComp: "set comprehension",
    ast.Dict: "dict literal",
    ast.List: "list literal",
    ast.Tuple: "tuple",
    ast.Set: "set literal",
    ast.Starred: "starred expression",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.JoinedStr: "f-string",
}


_BOOL_PRECEDENCE = {ast.Or: (1, "or"), ast.And: (2, "and")}
_BIN_PRECEDENCE = {ast.Add: (5, "+"), ast.Sub: (5, "-"), ast.Mult: (6, "*"), ast.Div: (6, "/")}
_CMP_SYMBOLS = {k: v[0] for k, v in _COMPARATORS.items()}


def unparse(node: ast.expr) -> str:
    """The canonical text of an expression, with only the parentheses its meaning needs (the
    standard library's ``ast.unparse`` adds some to the operands of a long ``and``)."""
    return _unparse(node, 0)


def _unparse(node: ast.expr, outer: int) -> str:
    if isinstance(node, ast.BoolOp):
        level, word = _BOOL_PRECEDENCE[type(node.op)]
        text = f" {word} ".join(_unparse(v, level + 1) for v in node.values)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        level, text = 3, f"not {_unparse(node.operand, 3)}"
    elif isinstance(node, ast.Compare) and all(type(o) in _CMP_SYMBOLS for o in node.ops):
        level = 4
        parts = [_unparse(node.left, 5)]
        for op, right in zip(node.ops, node.comparators, strict=True):
            parts.append(f"{_CMP_SYMBOLS[type(op)]} {_unparse(right, 5)}")
        text = " ".join(parts)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_PRECEDENCE:
        level, symbol = _BIN_PRECEDENCE[type(node.op)]
        text = f"{_unparse(node.left, level)} {symbol} {_unparse(node.right, level + 1)}"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = "-" if isinstance(node.op, ast.USub) else "+"
        level, text = 7, f"{sign}{_unparse(node.operand, 7)}"
    elif isinstance(node, ast.Call):
        args = [_unparse(a, 0) for a in node.args]
        args += [f"{k.arg}={_unparse(k.value, 0)}" for k in node.keywords]
        level, text = 8, f"{_unparse(node.func, 8)}({', '.join(args)})"
    elif isinstance(node, ast.Subscript):
        index = node.slice
        if isinstance(index, ast.Slice):
            lower = _unparse(index.lower, 0) if index.lower is not None else ""
            upper = _unparse(index.upper, 0) if index.upper is not None else ""
            inner = f"{lower}:{upper}"
        else:
            inner = _unparse(index, 0)
        level, text = 8, f"{_unparse(node.value, 8)}[{inner}]"
    else:
        level, text = 8, ast.unparse(node)
    return f"({text})" if level < outer else text


def numpy_sum(values: Sequence[float]) -> float:
    """Sum in the order ``numpy.add.reduce`` uses for a contiguous float64 array (pairwise
    summation with eight accumulators), so ``numpy_sum(v) / len(v) == numpy.mean(v)`` bit for
    bit and boundary cases decide as in AIND's engine."""
    n = len(values)
    if n < 8:
        total = -0.0
        for v in values:
            total += v
        return total
    if n <= 128:
        acc = list(values[:8])
        end = n - n % 8
        for i in range(8, end, 8):
            for j in range(8):
                acc[j] += values[i + j]
        total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        for v in values[end:]:
            total += v
        return total
    half = n // 2
    half -= half % 8
    return numpy_sum(values[:half]) + numpy_sum(values[half:])


def _num(value: float | None) -> float:
    return NAN if value is None else float(value)


def _observed(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Context:
    """What a node reads when it is evaluated: metrics and (for policies) parameters."""

    def __init__(
        self, metrics: MetricSource, parameters: Mapping[str, ParamValue] | None = None
    ) -> None:
        self.metrics = metrics
        self.parameters = parameters or {}
        self._series: dict[str, list[float]] = {}
        self.observed_conditions: dict[str, bool] = {}

    def series(self, name: str) -> list[float]:
        """A session metric's values as floats (missing: NaN), cached per evaluation."""
        if name not in self._series:
            self._series[name] = [_num(v) for v in self.metrics.series(name)]
        return self._series[name]


@dataclass
class Node:
    """A node of a compiled expression."""

    kind: Kind
    text: str

    def eval(self, ctx: Context) -> Any:
        """The node's value."""
        raise NotImplementedError

    def observe(self, ctx: Context, out: list[Observation], root: bool) -> bool:
        """Evaluates a boolean node, appending its evidence to ``out``."""
        return bool(self.eval(ctx))


@dataclass
class Const(Node):
    """A literal (numbers, booleans, or a quoted string as a policy value)."""

    value: float | bool | str = 0.0

    def eval(self, ctx: Context) -> Any:
        return self.value


@dataclass
class Counter(Node):
    """A counter metric, or a session metric's value for the judged session."""

    name: str = ""

    def eval(self, ctx: Context) -> float:
        return _num(ctx.metrics.value(self.name))


@dataclass
class TrialWindow(Node):
    """A trial metric over the last ``window`` trials."""

    name: str = ""
    window: int = 0

    def eval(self, ctx: Context) -> float:
        return _num(ctx.metrics.value(self.name, self.window))


@dataclass
class MetricCall(Node):
    """A metric called with keyword arguments: a number, or (a window series) a list."""

    name: str = ""
    window: int | None = None
    arguments: dict[str, ParamValue] = field(default_factory=dict)

    def eval(self, ctx: Context) -> Any:
        if self.kind == "series":
            return [_num(v) for v in ctx.metrics.series(self.name, self.arguments)]
        return _num(ctx.metrics.value(self.name, self.window, self.arguments))


@dataclass
class ConditionRef(Node):
    """A named condition of the curriculum, used by name."""

    name: str = ""
    condition: Node | None = None

    def eval(self, ctx: Context) -> bool:
        assert self.condition is not None
        return bool(self.condition.eval(ctx))

    def observe(self, ctx: Context, out: list[Observation], root: bool) -> bool:
        assert self.condition is not None
        if self.name in ctx.observed_conditions:  # its parts are in the evidence already
            result = ctx.observed_conditions[self.name]
        else:
            result = self.condition.observe(ctx, out, True)
            ctx.observed_conditions[self.name] = result
        out.append(_composite(self.name, result))
        return result


@dataclass
class Quantifier(Node):
    """``all(mask)`` / ``any(mask)`` over a slice of sessions or a window series compared with
    a number. As evidence: the extreme value that decides (the smallest for ``all(x > t)``,
    the largest for ``any(x > t)``...) against the number."""

    every: bool = True
    mask: Compare | None = None

    def eval(self, ctx: Context) -> bool:
        assert self.mask is not None
        values = [bool(v) for v in self.mask.eval(ctx)]
        return all(values) if self.every else any(values)

    def observe(self, ctx: Context, out: list[Observation], root: bool) -> bool:
        assert self.mask is not None and self.mask.left is not None
        assert self.mask.right is not None
        result = self.eval(ctx)
        left, right = self.mask.left.eval(ctx), self.mask.right.eval(ctx)
        series_left = isinstance(left, list)
        values = [v for v in (left if series_left else right) if not math.isnan(v)]
        number = float(right if series_left else left)
        comparator = self.mask.comparator if series_left else _FLIPPED[self.mask.comparator]
        upward = comparator in (">", ">=")
        low = self.every == upward  # all(x > t): min decides; any(x > t): max decides
        observed = (min(values) if low else max(values)) if values else None
        side = self.mask.left if series_left else self.mask.right
        out.append(
            Observation(
                metric=f"{'min' if low else 'max'}({side.text})",
                observed=observed,
                comparator=comparator,
                threshold=number if math.isfinite(number) else 0.0,
                passed=result,
            )
        )
        return result


@dataclass
class SessionIndex(Node):
    """One recent session's value of a session metric (``index`` < 0)."""

    name: str = ""
    index: int = -1

    def eval(self, ctx: Context) -> float:
        values = ctx.series(self.name)
        return values[self.index] if len(values) >= -self.index else NAN


@dataclass
class SessionSlice(Node):
    """Recent sessions' values of a session metric (Python slice semantics)."""

    name: str = ""
    lower: int = -1
    upper: int | None = None

    def eval(self, ctx: Context) -> list[float]:
        return ctx.series(self.name)[self.lower : self.upper]


@dataclass
class Parameter(Node):
    """A stage parameter's current value (policies only)."""

    name: str = ""

    def eval(self, ctx: Context) -> Any:
        value = ctx.parameters.get(self.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return NAN
        return float(value)


@dataclass
class Aggregate(Node):
    """``mean``/``min``/``max``/``sum``/``len`` of a session slice or a mask."""

    function: str = "mean"
    arg: Node | None = None

    def eval(self, ctx: Context) -> float:
        assert self.arg is not None
        values = [float(v) for v in self.arg.eval(ctx)]
        if self.function == "len":
            return float(len(values))
        if self.function == "sum":
            return numpy_sum(values)
        if not values:
            return NAN
        if self.function == "mean":
            return numpy_sum(values) / len(values)
        if any(math.isnan(v) for v in values):
            return NAN
        return min(values) if self.function == "min" else max(values)


@dataclass
class Call(Node):
    """``abs(x)``, or ``min``/``max`` of several numbers (NaN if any is NaN)."""

    function: str = "abs"
    args: list[Node] = field(default_factory=list)

    def eval(self, ctx: Context) -> float:
        values = [float(a.eval(ctx)) for a in self.args]
        if any(math.isnan(v) for v in values):
            return NAN
        if self.function == "abs":
            return abs(values[0])
        return min(values) if self.function == "min" else max(values)


@dataclass
class Arithmetic(Node):
    """``a + b``, ``a - b``, ``a * b``, ``a / b`` (division by zero gives NaN)."""

    op: Callable[[float, float], float] = operator.add
    left: Node | None = None
    right: Node | None = None

    def eval(self, ctx: Context) -> float:
        assert self.left is not None and self.right is not None
        return self.op(float(self.left.eval(ctx)), float(self.right.eval(ctx)))


@dataclass
class Negative(Node):
    """``-x``."""

    arg: Node | None = None

    def eval(self, ctx: Context) -> float:
        assert self.arg is not None
        return -float(self.arg.eval(ctx))


@dataclass
class Compare(Node):
    """One comparison. ``metric``/``threshold`` describe it as evidence: the metric side's
    text and the constant it is compared with (a comparison of two metric expressions is
    recorded as ``left - right`` against 0)."""

    comparator: str = ">="
    op: Callable[[float, float], bool] = operator.ge
    left: Node | None = None
    right: Node | None = None
    metric: str = ""
    metric_node: Node | None = None
    threshold: float = 0.0
    evidence_comparator: str = ">="

    def eval(self, ctx: Context) -> Any:
        assert self.left is not None and self.right is not None
        left, right = self.left.eval(ctx), self.right.eval(ctx)
        if self.kind == "mask":
            if isinstance(left, list):
                return [_compare(self.op, v, float(right)) for v in left]
            return [_compare(self.op, float(left), v) for v in right]
        return _compare(self.op, float(left), float(right))

    def observe(self, ctx: Context, out: list[Observation], root: bool) -> bool:
        assert self.left is not None and self.right is not None and self.metric_node
        left, right = float(self.left.eval(ctx)), float(self.right.eval(ctx))
        passed = _compare(self.op, left, right)
        observed = float(self.metric_node.eval(ctx))
        out.append(
            Observation(
                metric=self.metric,
                observed=_observed(observed),
                comparator=self.evidence_comparator,
                threshold=self.threshold,
                passed=passed,
            )
        )
        return passed


def _compare(op: Callable[[float, float], bool], left: float, right: float) -> bool:
    if math.isnan(left) or math.isnan(right):
        return False
    return op(left, right)


@dataclass
class Logical(Node):
    """``and``/``or`` over booleans (every operand is evaluated, for complete evidence)."""

    conjunction: bool = True
    args: list[Node] = field(default_factory=list)
    chain: bool = False  # a chained comparison: its parts are the evidence

    def eval(self, ctx: Context) -> bool:
        values = [bool(a.eval(ctx)) for a in self.args]
        return all(values) if self.conjunction else any(values)

    def observe(self, ctx: Context, out: list[Observation], root: bool) -> bool:
        values = [a.observe(ctx, out, False) for a in self.args]
        result = all(values) if self.conjunction else any(values)
        if not root and not self.chain:
            out.append(_composite(self.text, result))
        return result


@dataclass
class Negation(Node):
    """``not x``."""

    arg: Node | None = None

    def eval(self, ctx: Context) -> bool:
        assert self.arg is not None
        return not self.arg.eval(ctx)

    def observe(self, ctx: Context, out: list[Observation], root: bool) -> bool:
        assert self.arg is not None
        result = not self.arg.observe(ctx, out, False)
        if not root:
            out.append(_composite(self.text, result))
        return result


def _composite(text: str, result: bool) -> Observation:
    return Observation(
        metric=text,
        observed=1.0 if result else 0.0,
        comparator="==",
        threshold=1.0,
        passed=result,
    )


@dataclass(frozen=True)
class Scope:
    """The names an expression may use.

    Attributes:
        metrics: metric definitions (the registry plus the curriculum's declared metrics).
        parameters: parameter names usable as values (policies only; empty for rules).
        conditions: the curriculum's named conditions defined so far, by name.
    """

    metrics: MetricRegistry
    parameters: frozenset[str] = frozenset()
    conditions: Mapping[str, Expression] = field(default_factory=dict)


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression.

    Attributes:
        source: the text as written.
        text: the canonical text (as the evidence prints it).
        root: the evaluator tree.
        metrics: metric names the expression reads.
        parameters: parameter names it reads.
        trial_window: the longest trial window it reads (0: none).
        session_lookback: how many recent sessions it reads (0: none).
        date_lookback: how many recent dates a window metric pools (0: none).
    """

    source: str
    text: str
    root: Node
    metrics: frozenset[str]
    parameters: frozenset[str]
    trial_window: int
    session_lookback: int
    date_lookback: int = 0

    def holds(
        self, metrics: MetricSource, parameters: Mapping[str, ParamValue] | None = None
    ) -> bool:
        """Whether a boolean expression holds."""
        return bool(self.root.eval(Context(metrics, parameters)))

    def judge(
        self, metrics: MetricSource, parameters: Mapping[str, ParamValue] | None = None
    ) -> tuple[bool, list[Observation]]:
        """Evaluates a boolean expression and returns its verdict with every observation."""
        out: list[Observation] = []
        verdict = self.root.observe(Context(metrics, parameters), out, True)
        return verdict, out

    def value(
        self, metrics: MetricSource, parameters: Mapping[str, ParamValue] | None = None
    ) -> Any:
        """The value of a numeric (or constant) expression."""
        return self.root.eval(Context(metrics, parameters))


def parse_condition(source: str, scope: Scope) -> Expression:
    """Parses a rule or policy condition; it must be a boolean expression.

    Raises:
        RuleSyntaxError: with the reason and the column where the problem starts.
    """
    expression = _parse(source, scope)
    if expression.root.kind != "bool":
        raise RuleSyntaxError(
            f"a condition must be true or false (a comparison, and/or/not), not a "
            f"{_describe(expression.root.kind)}: {expression.text}",
            1,
        )
    return expression


def parse_value(source: str, scope: Scope) -> Expression:
    """Parses a policy's new value for a parameter: a number expression or a constant.

    Raises:
        RuleSyntaxError: with the reason and the column where the problem starts.
    """
    expression = _parse(source, scope)
    if expression.root.kind not in ("number", "text", "bool") or (
        expression.root.kind != "number" and not isinstance(expression.root, Const)
    ):
        raise RuleSyntaxError(
            f"a parameter value must be a number expression or a constant, not a "
            f"{_describe(expression.root.kind)}: {expression.text}",
            1,
        )
    return expression


def parse_report(source: str, scope: Scope) -> Expression:
    """Parses a reported metric expression: a number, a condition (reported as 1 or 0) or a
    window series (reported value by value).

    Raises:
        RuleSyntaxError: with the reason and the column where the problem starts.
    """
    expression = _parse(source, scope)
    if expression.root.kind not in ("number", "bool", "series"):
        raise RuleSyntaxError(
            f"a reported value must be a number, a condition or a window series, not a "
            f"{_describe(expression.root.kind)}: {expression.text}",
            1,
        )
    return expression


def _describe(kind: Kind) -> str:
    return {
        "bool": "condition",
        "number": "number",
        "series": "slice of sessions",
        "mask": "comparison of a slice of sessions",
        "text": "string",
    }[kind]


def _parse(source: str, scope: Scope) -> Expression:
    text = " ".join(source.split())  # rules are often written over several lines
    if not text:
        raise RuleSyntaxError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise RuleSyntaxError(_syntax_message(exc, text), exc.offset) from None
    builder = _Builder(scope)
    root = builder.build(tree.body, top=True)
    return Expression(
        source=source,
        text=root.text,
        root=root,
        metrics=frozenset(builder.metrics),
        parameters=frozenset(builder.parameters),
        trial_window=builder.trial_window,
        session_lookback=builder.session_lookback,
        date_lookback=builder.date_lookback,
    )


def _syntax_message(exc: SyntaxError, text: str) -> str:
    reason = exc.msg
    if text.count("(") != text.count(")"):
        reason = f"unbalanced parentheses ({text.count('(')} opened, {text.count(')')} closed)"
    elif "was never closed" in reason or "unmatched" in reason:
        reason = f"unbalanced brackets: {reason}"
    return f"syntax error: {reason}"


class _Builder:
    """Translates a Python ast into evaluator nodes, checking every construct and name."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.metrics: set[str] = set()
        self.parameters: set[str] = set()
        self.trial_window = 0
        self.session_lookback = 0
        self.date_lookback = 0

    def fail(self, node: ast.AST, message: str) -> RuleSyntaxError:
        column = getattr(node, "col_offset", None)
        return RuleSyntaxError(message, None if column is None else column + 1)

    def build(self, node: ast.expr, top: bool = False, in_aggregate: bool = False) -> Node:
        text = unparse(node)
        if isinstance(node, ast.BoolOp):
            args = [self.expect(a, "bool", "an operand of and/or") for a in node.values]
            return Logical("bool", text, conjunction=isinstance(node.op, ast.And), args=args)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return Negation("bool", text, arg=self.expect(node.operand, "bool", "not"))
            if isinstance(node.op, ast.USub | ast.UAdd):
                arg = self.expect(node.operand, "number", "a sign")
                if isinstance(node.op, ast.UAdd):
                    return arg
                if isinstance(arg, Const):
                    return Const("number", text, value=-float(arg.value))
                return Negative("number", text, arg=arg)
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.Compare):
            return self.compare(node, text, in_aggregate)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITHMETIC:
                raise self.fail(node, f"only + - * / are allowed, not {ast.unparse(node)}")
            symbol, op = _ARITHMETIC[type(node.op)]
            left = self.expect(node.left, "number", f"the left of {symbol}")
            right = self.expect(node.right, "number", f"the right of {symbol}")
            if isinstance(left, Const) and isinstance(right, Const):
                return Const("number", text, value=op(float(left.value), float(right.value)))
            return Arithmetic("number", text, op=op, left=left, right=right)
        if isinstance(node, ast.Constant):
            return self.constant(node, text)
        if isinstance(node, ast.Name):
            return self.name(node, text)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, text)
        if isinstance(node, ast.Call):
            return self.call(node, text)
        construct = _CONSTRUCT_NAMES.get(type(node), type(node).__name__)
        raise self.fail(node, f"{construct} is not allowed in a rule")

    def expect(self, node: ast.expr, kind: Kind, where: str) -> Node:
        built = self.build(node)
        if built.kind != kind:
            raise self.fail(
                node,
                f"{where} must be a {_describe(kind)}, but {built.text} is a "
                f"{_describe(built.kind)}",
            )
        return built

    def constant(self, node: ast.Constant, text: str) -> Node:
        value = node.value
        if isinstance(value, bool):
            return Const("bool", text, value=value)
        if isinstance(value, int | float):
            if not math.isfinite(float(value)):
                raise self.fail(node, "numbers must be finite")
            return Const("number", text, value=float(value))
        if isinstance(value, str):
            return Const("text", text, value=value)
        raise self.fail(node, f"the constant {text} is not allowed")

    def unknown(self, node: ast.AST, name: str) -> RuleSyntaxError:
        known = [
            *self.scope.conditions,
            *self.scope.metrics.names(),
            *self.scope.parameters,
            *FUNCTIONS,
        ]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = "metric or parameter" if self.scope.parameters else "metric"
        return self.fail(node, f"unknown {what} {name!r}{hint}")

    def name(self, node: ast.Name, text: str) -> Node:
        condition = self.scope.conditions.get(node.id)
        if condition is not None:
            self.absorb(condition)
            return ConditionRef("bool", text, name=node.id, condition=condition.root)
        definition = self.scope.metrics.get(node.id)
        if definition is None:
            if node.id in self.scope.parameters:
                self.parameters.add(node.id)
                return Parameter("number", text, name=node.id)
            if node.id in FUNCTIONS:
                raise self.fail(node, f"{node.id} is a function: call it, e.g. {node.id}(x)")
            raise self.unknown(node, node.id)
        self.metrics.add(node.id)
        if definition.kind == "trials":
            raise self.fail(
                node,
                f"{node.id} is computed over trials: give its window, e.g. {node.id}(window=200)",
            )
        if definition.kind in ("window", "window_series"):
            raise self.fail(
                node,
                f"{node.id} pools a window: call it with sessions=k or dates=k, e.g. "
                f"{node.id}(dates=3)",
            )
        required = [a.name for a in definition.arguments if a.required]
        if required:
            raise self.fail(node, f"{node.id} needs arguments: {definition.usage()}")
        if definition.kind == "session":
            self.session_lookback = max(self.session_lookback, 1)
        return Counter("number", text, name=node.id)

    def absorb(self, expression: Expression) -> None:
        """Takes in what a named condition reads."""
        self.metrics.update(expression.metrics)
        self.trial_window = max(self.trial_window, expression.trial_window)
        self.session_lookback = max(self.session_lookback, expression.session_lookback)
        self.date_lookback = max(self.date_lookback, expression.date_lookback)

    def session_metric(self, node: ast.expr) -> str:
        if not isinstance(node, ast.Name):
            self.build(node)  # a construct outside the language is named as such
            raise self.fail(node, f"only a session metric can be indexed, not {unparse(node)}")
        definition = self.scope.metrics.get(node.id)
        if definition is None:
            raise self.unknown(node, node.id)
        if definition.kind != "session":
            raise self.fail(
                node,
                f"{node.id} is a {definition.kind} metric, not a per-session one: it cannot be "
                f"indexed or sliced",
            )
        self.metrics.add(node.id)
        return node.id

    def integer(self, node: ast.expr | None, what: str) -> int | None:
        if node is None:
            return None
        built = self.build(node)
        if (
            not isinstance(built, Const)
            or built.kind != "number"
            or not float(built.value).is_integer()
        ):
            raise self.fail(node, f"{what} must be a whole number, not {ast.unparse(node)}")
        return int(float(built.value))

    def subscript(self, node: ast.Subscript, text: str) -> Node:
        name = self.session_metric(node.value)
        index = node.slice
        if isinstance(index, ast.Slice):
            if index.step is not None:
                raise self.fail(index, "a slice of sessions cannot have a step")
            lower = self.integer(index.lower, "a slice bound")
            upper = self.integer(index.upper, "a slice bound")
            if lower is None or lower >= 0:
                raise self.fail(
                    node,
                    f"a slice must count back from the latest session, e.g. {name}[-5:] "
                    f"(the state keeps only the last {MAX_SESSION_HISTORY} sessions)",
                )
            if upper is not None and not lower < upper <= 0:
                raise self.fail(node, f"the slice {text} must end after it starts, at 0 or below")
            self.lookback(node, -lower)
            return SessionSlice("series", text, name=name, lower=lower, upper=upper or None)
        position = self.integer(index, "an index")
        assert position is not None
        if position >= 0:
            raise self.fail(
                node,
                f"index sessions from the latest: {name}[-1] is the judged session, "
                f"{name}[-2] the one before",
            )
        self.lookback(node, -position)
        return SessionIndex("number", text, name=name, index=position)

    def lookback(self, node: ast.AST, sessions: int) -> None:
        if sessions > MAX_SESSION_HISTORY:
            raise self.fail(
                node,
                f"reads {sessions} sessions back; the processor keeps the last "
                f"{MAX_SESSION_HISTORY}",
            )
        self.session_lookback = max(self.session_lookback, sessions)

    def call(self, node: ast.Call, text: str) -> Node:
        if not isinstance(node.func, ast.Name):
            if not isinstance(node.func, ast.Attribute):
                self.build(node.func)  # a construct outside the language is named as such
            raise self.fail(
                node,
                f"unknown function {ast.unparse(node.func)!r}; the rule language has "
                f"{', '.join(FUNCTIONS)} and trial metrics such as accuracy(window=200)",
            )
        function = node.func.id
        definition = self.scope.metrics.get(function)
        if definition is not None:
            return self.metric_call(node, text, definition)
        if function in self.scope.conditions:
            raise self.fail(node, f"{function} is a named condition: use it without parentheses")
        if function not in FUNCTIONS:
            if function in self.scope.parameters:
                raise self.fail(node, f"{function} is a parameter, not a function")
            trial_metrics = [d.name for d in self.scope.metrics if d.called]
            close = difflib.get_close_matches(function, [*FUNCTIONS, *trial_metrics], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.fail(
                node,
                f"unknown function {function!r}{hint}; the rule language has "
                f"{', '.join(FUNCTIONS)}",
            )
        if node.keywords:
            raise self.fail(node, f"{function} takes no keyword arguments")
        if function == "abs":
            if len(node.args) != 1:
                raise self.fail(node, "abs takes one number")
            return Call(
                "number",
                text,
                function="abs",
                args=[self.expect(node.args[0], "number", "abs's argument")],
            )
        if function in ("min", "max") and len(node.args) >= 2:
            args = [self.expect(a, "number", f"an argument of {function}") for a in node.args]
            return Call("number", text, function=function, args=args)
        if function in QUANTIFIERS:
            return self.quantifier(node, text, function)
        if len(node.args) != 1:
            raise self.fail(
                node, f"{function} takes one slice of sessions, e.g. {function}(x[-5:])"
            )
        arg = self.build(node.args[0], in_aggregate=True)
        if arg.kind not in ("series", "mask"):
            raise self.fail(
                node,
                f"{function} needs a slice of sessions such as finished_trials[-5:], "
                f"not {arg.text}",
            )
        return Aggregate("number", text, function=function, arg=arg)

    def quantifier(self, node: ast.Call, text: str, function: str) -> Node:
        if len(node.args) != 1:
            raise self.fail(node, f"{function} takes one comparison, e.g. {function}(x[-3:] > 2)")
        arg = self.build(node.args[0], in_aggregate=True)
        if not isinstance(arg, Compare) or arg.kind != "mask":
            raise self.fail(
                node,
                f"{function} needs a slice of sessions or a window series compared with a "
                f"number, e.g. {function}(window_n_trials(dates=3) > 400), not {arg.text}",
            )
        return Quantifier("bool", text, every=function == "all", mask=arg)

    def argument_value(self, node: ast.expr, name: str) -> ParamValue:
        built = self.build(node)
        if not isinstance(built, Const):
            raise self.fail(
                node,
                f"argument {name} must be a constant (a number, a quoted string, True or "
                f"False), not {ast.unparse(node)}",
            )
        return built.value

    def metric_call(self, node: ast.Call, text: str, definition: MetricDefinition) -> Node:
        name = definition.name
        if not definition.called:
            raise self.fail(
                node, f"{name} is a {definition.kind} metric: use it without parentheses"
            )
        if node.args:
            raise self.fail(node, f"{name} takes keyword arguments only: {definition.usage()}")
        given: dict[str, ParamValue] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise self.fail(node, f"{name} takes keyword arguments only: {definition.usage()}")
            if keyword.arg in given:
                raise self.fail(node, f"{name}: {keyword.arg} is given twice")
            given[keyword.arg] = self.argument_value(keyword.value, keyword.arg)
        if definition.kind == "trials" and not definition.arguments and list(given) != ["window"]:
            raise self.fail(node, f"{name} takes exactly one argument, window=N (trials)")
        problems = definition.check_arguments(given)
        if problems:
            raise self.fail(node, "; ".join(problems))
        types = {a.name: a.type for a in definition.all_arguments()}
        for key, value in list(given.items()):
            if types.get(key) == "int" and isinstance(value, float):
                given[key] = int(value)
        self.metrics.add(name)
        window = given.pop("window", None) if definition.kind == "trials" else None
        if window is not None:
            assert isinstance(window, int)
            self.trial_window = max(self.trial_window, window)
            if not given:
                return TrialWindow("number", text, name=name, window=window)
        if isinstance(given.get("sessions"), int):
            sessions = given["sessions"]
            assert isinstance(sessions, int)
            self.lookback(node, sessions)
        if isinstance(given.get("dates"), int):
            dates = given["dates"]
            assert isinstance(dates, int)
            self.date_lookback = max(self.date_lookback, dates)
        kind: Kind = "series" if definition.kind == "window_series" else "number"
        return MetricCall(kind, text, name=name, window=window, arguments=given)

    def compare(self, node: ast.Compare, text: str, in_aggregate: bool) -> Node:
        operands = [node.left, *node.comparators]
        built = [self.build(o) for o in operands]
        parts: list[Node] = []
        for i, op in enumerate(node.ops):
            if type(op) not in _COMPARATORS:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
            left, right = built[i], built[i + 1]
            part_text = unparse(
                ast.Compare(left=operands[i], ops=[op], comparators=[operands[i + 1]])
            )
            parts.append(self.comparison(node, part_text, op, left, right, in_aggregate))
        if len(parts) == 1:
            return parts[0]
        if any(p.kind == "mask" for p in parts):
            raise self.fail(node, "a slice of sessions cannot be in a chained comparison")
        return Logical("bool", text, conjunction=True, args=parts, chain=True)

    def comparison(
        self,
        node: ast.AST,
        text: str,
        op: ast.cmpop,
        left: Node,
        right: Node,
        in_aggregate: bool,
    ) -> Compare:
        symbol, function = _COMPARATORS[type(op)]
        for side in (left, right):
            if side.kind not in ("number", "series"):
                raise self.fail(
                    node,
                    f"{text}: only numbers can be compared, and {side.text} is a "
                    f"{_describe(side.kind)}",
                )
        if "series" in (left.kind, right.kind):
            if left.kind == right.kind:
                raise self.fail(node, f"{text}: two slices of sessions cannot be compared")
            if not in_aggregate:
                raise self.fail(
                    node,
                    f"{text}: a slice of sessions compared with a number must be inside "
                    f"mean/sum/len, e.g. sum({text}) >= 2",
                )
            return Compare("mask", text, comparator=symbol, op=function, left=left, right=right)
        compare = Compare("bool", text, comparator=symbol, op=function, left=left, right=right)
        if isinstance(left, Const) and isinstance(right, Const):
            raise self.fail(node, f"{text} compares two constants: it does not depend on the mouse")
        if isinstance(right, Const):
            compare.metric, compare.metric_node = left.text, left
            compare.threshold, compare.evidence_comparator = float(right.value), symbol
        elif isinstance(left, Const):
            compare.metric, compare.metric_node = right.text, right
            compare.threshold, compare.evidence_comparator = float(left.value), _FLIPPED[symbol]
        else:
            difference = (
                f"{left.text} - ({right.text})"
                if " " in right.text
                else (f"{left.text} - {right.text}")
            )
            compare.metric = difference
            compare.metric_node = Arithmetic(
                "number", difference, op=operator.sub, left=left, right=right
            )
            compare.threshold, compare.evidence_comparator = 0.0, symbol
        return compare

"""The line where a student's math departs, from their traced intermediates and the catalogue.

Every snapshot (see `trace.py`) is matched against the catalogue (see `catalogue.py`): it is
*right* when it equals a correct quantity, *wrong* when it equals a known wrong variant or a
scaled or rearranged correct one, *unknown* otherwise (many correct intermediates are in no
catalogue: `dxhat * xmu`, `(var + eps)**-1.5`). Among the snapshots a wrong output depends
on, a value is *poisoned* when it is not right and nothing computed from it is right again.
The departure is the first poisoned one that matches a known wrong variant; failing that the
first poisoned one whose variable names a catalogue quantity (`dvar`, `x_hat`, `sample_var`);
failing that the first poisoned one whose inputs are all right. A departure in a value the
backward took from the cache is traced back to the forward line that made it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .agree import difference
from .catalogue import Catalogue, Match, Quantity, _other_counts
from .trace import Snapshot

__all__ = ["StageMatch", "LineDeparture", "locate_departure", "stage_records", "quantity_for_name"]


@dataclass
class StageMatch:
    """One catalogue quantity and where the student's code holds it.

    name: the quantity ("xmu", "dxmu1", "dvar", "dx", ...); formula: how it is computed;
    line, variable, function: the first student line whose value matched it (or, for the
    departure, the line that should have held it), None when no line did; value: the
    student's array there (None when unmatched); expected: the correct array (statistics
    and parameter gradients flattened, the rest in x's layout); matches: whether the
    student's value equals it; departure: True for the stage of the first departure."""

    name: str
    formula: str
    line: int | None
    variable: str | None
    function: str | None
    value: np.ndarray | None
    expected: np.ndarray
    matches: bool
    departure: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: arrays as nested lists."""
        return {"name": self.name, "formula": self.formula, "line": self.line,
                "variable": self.variable, "function": self.function,
                "value": None if self.value is None else np.asarray(self.value).tolist(),
                "expected": np.asarray(self.expected).tolist(), "matches": self.matches,
                "departure": self.departure}


@dataclass
class LineDeparture:
    """Where and how the student's math departs."""

    line: int
    variable: str
    function: str
    stage: str | None          # the catalogue quantity the line should have held
    expected: np.ndarray | None
    got: np.ndarray
    variant: str | None        # what is wrong, when a known variant explains it
    sentence: str
    from_cache: bool = False   # the backward took the value from the forward's cache
    part: bool = False         # the line holds only some of the quantity's values (a slice)
    slip: str = ""             # the known slip's name, when one matches
    count: int | None = None   # a count slip: the number divided by where the count belongs


SYNONYMS = {
    "mu": ("mu", "mean", "samplemean", "xmean", "batchmean", "means", "avg", "mubatch", "mux"),
    "var": ("var", "variance", "samplevar", "xvar", "sigma2", "sigmasq", "batchvar", "variances",
            "samplevariance", "sigmasquared"),
    "var_eps": ("vareps", "varpluseps", "varianceeps", "variancepluseps"),
    "sqrtvar": ("sqrtvar", "std", "sigma", "stddev", "stdev", "sd", "standardd", "samplestd",
                "sqrtvareps", "xstd"),
    "ivar": ("ivar", "invstd", "istd", "invvar", "inverse", "inv", "invsigma", "isqrtvar",
             "inversestd", "ivarstd", "rstd"),
    "xhat": ("xhat", "xnorm", "xnormalized", "normalizedx", "xn", "xtilde", "normalized",
             "normalization", "xnormed", "xhatt", "xbar"),
    "xmu": ("xmu", "xminusmean", "xc", "xcentered", "xm", "centered", "xsubmean", "xmmu",
            "xminusmu", "diff", "xdiff"),
    "sq": ("sq", "xmusq", "sqxmu", "square", "xmu2", "sqr"),
    "gammax": ("gammax", "gammaxhat", "scaled", "scaledx", "gammatimesxhat"),
    "out": ("out", "y"),
    "x": ("x",),
}
_BASE = {alias: name for name, aliases in SYNONYMS.items() for alias in aliases}
GRADIENTS = {"dbeta", "dgamma", "dxhat", "divar", "dsqrtvar", "dvar", "dsq", "dxmu", "dmu", "dx"}


def quantity_for_name(variable: str) -> str | None:
    """The catalogue quantity a variable's name suggests: `sample_var` -> var, `dx_hat` ->
    dxhat, `dL_dvar` -> dvar, `dxmu1` -> dxmu1; None when it suggests none."""
    variable = re.sub(r"_(t|trans|transposed|transpose|flat|reshaped|r|2d|4d)$", "",
                      variable, flags=re.IGNORECASE)
    key = re.sub(r"[^a-z0-9]", "", variable.lower())
    if key in ("dxmu1", "dxmu2", "dx1", "dx2"):
        return key
    key = re.sub(r"\d+$", "", key)
    for prefix in ("dldy", "dl", "dout", "grad"):
        if key.startswith(prefix + "d") and len(key) > len(prefix) + 1:
            key = key[len(prefix):]
            break
    if key in _BASE:
        return _BASE[key]
    if key.startswith("d") and key[1:] in _BASE:
        name = "d" + _BASE[key[1:]]
        name = {"dsqrtvar": "dsqrtvar", "dvar_eps": "dvar", "dx": "dx"}.get(name, name)
        return name if name in GRADIENTS else None
    if key in ("dbeta", "dgamma"):
        return key
    return None


def _status(snapshot: Snapshot, matches: list[Match]) -> str:
    if snapshot.parameter:
        return "right"  # an argument: the inputs themselves, or a cache judged elsewhere
    if not np.any(snapshot.value):
        return "blank"  # an allocation (np.zeros) a later line fills: nothing computed yet
    if any(m.correct for m in matches):
        return "right"
    if matches:
        return "wrong"
    return "unknown"


def _short(array: np.ndarray | None) -> str:
    if array is None:
        return "?"
    flat = np.asarray(array, np.float64).ravel()
    text = ", ".join(f"{v:.5g}" for v in flat[:3])
    return f"[{text}{', ...' if flat.size > 3 else ''}]"


def _variant_text(match: Match, n: int, catalogue: Catalogue | None = None) -> str:
    q = match.quantity
    if not q.correct:
        return q.meaning
    if match.arrangement:
        return (f"the right values of {q.name} in another order: a reshape without the transpose "
                f"that belongs with it?")
    counts = {} if catalogue is None else {m: label for m, label in _other_counts(catalogue.spec)}
    return f"{q.name} {factor_text(match.factor, n, counts)}"


def factor_text(k: float, n: int, counts: dict[int, str] | None = None) -> str:
    """What a scalar factor k on a correct quantity means; never called with k near 1."""
    known = ((-1.0, "with its sign flipped"), (2.0, "twice too large (a factor 2 too many)"),
             (0.5, "half as large: a missing factor 2"), (-0.5, "times -1/2"),
             (-2.0, "times -2"))
    for value, text in known:
        if abs(k - value) <= 1e-6 * abs(value):
            return text
    if n > 1 and abs(k - n / (n - 1)) <= 1e-6:
        return f"times N/(N-1) = {n}/{n - 1}: 1/(N-1) where 1/N belongs"
    if n > 1 and abs(k - (n - 1) / n) <= 1e-6:
        return f"times (N-1)/N = {n - 1}/{n}: 1/N where 1/(N-1) was used"
    for m, label in (counts or {}).items():  # a count where another belongs
        if abs(k - n / m) <= 1e-6 * k:
            return f"times {n}/{m}: looks like a division by {label} = {m} where the count {n} belongs"
        if abs(k - m / n) <= 1e-6 * k:
            return f"times {m}/{n}: looks like {label} = {m} where the count {n} belongs"
    return f"times {k:.6g}"


# A forward stage named after a variable only where the line could have made it: gamma *
# xhat needs gamma among the arguments it was made from, out gamma and beta too (positions
# among the judged forward's array arguments: x, gamma, beta).
_NEEDS = {"gammax": {1}, "out": {1, 2}}


def _arguments_reached(index: int, by_index: dict[int, Snapshot], top: str) -> set[int]:
    """The positions among `top`'s array arguments of those snapshot `index` was made from."""
    arguments = sorted(i for i, s in by_index.items() if s.parameter and s.function == top)
    position = {i: k for k, i in enumerate(arguments)}
    reached: set[int] = set()
    seen: set[int] = set()
    todo = [index]
    while todo:
        i = todo.pop()
        if i in seen or i not in by_index:
            continue
        seen.add(i)
        if i in position:
            reached.add(position[i])
        todo.extend(by_index[i].deps)
    return reached


def _stage_it_could_be(stage: str, reached: set[int], catalogue: Catalogue) -> str:
    """`stage` if the arguments reached allow it, else the furthest forward stage they do
    (`scaled = xmu / std` is xhat, whatever its name says)."""
    if _NEEDS[stage] <= reached:
        return stage
    for candidate in ("gammax", "xhat"):
        if _NEEDS.get(candidate, set()) <= reached and catalogue.named(candidate) is not None:
            return candidate
    return stage


def locate_departure(snapshots: list[Snapshot], outputs: dict[str, int], wrong: list[str],
                     catalogue: Catalogue, origin: list[Snapshot] | None = None,
                     origin_out: int | None = None
                     ) -> tuple[LineDeparture | None, dict[int, list[Match]]]:
    """The departure among `snapshots`, given the snapshot index of each returned output
    (e.g. {"dx": 41}) and the names of the outputs that are wrong; origin: the forward's
    snapshots, where a value taken from the cache is traced back to; origin_out: the index
    among them of the forward's output when that output is wrong. Also returns each
    snapshot's matches (for the per-stage record)."""
    n = catalogue.spec.count
    matches = {s.index: catalogue.match(s.value) for s in snapshots}
    status = {s.index: _status(s, matches[s.index]) for s in snapshots}
    starts = [outputs[name] for name in wrong if name in outputs]
    for name in wrong:  # an output judged wrong is wrong, whatever it happens to equal
        if name in outputs:
            index = outputs[name]
            own = catalogue.named(name)
            if own is None or not any(m.quantity is own and m.correct for m in matches[index]):
                status[index] = "wrong" if matches[index] else "unknown"
    if not starts:
        return None, matches
    by_index = {s.index: s for s in snapshots}
    cone: set[int] = set()
    todo = list(starts)
    while todo:
        index = todo.pop()
        if index in cone or index not in by_index:
            continue
        cone.add(index)
        todo.extend(by_index[index].deps)
    children: dict[int, list[int]] = {i: [] for i in cone}
    for index in cone:
        for dep in by_index[index].deps:
            if dep in children:
                children[dep].append(index)
    healed: dict[int, bool] = {}
    for index in sorted(cone, reverse=True):  # children come later in execution order
        healed[index] = any(status[c] == "right" or healed[c] for c in children[index])
    poisoned = [i for i in sorted(cone) if status[i] not in ("right", "blank") and not healed[i]]
    if not poisoned:
        return None, matches
    # The departure is a line of the function being judged: where it hands a helper of
    # the student's wrong arguments, or stores what the helper returned, not inside it.
    top = by_index[starts[0]].function
    # A slip inside a helper of the student's own (eps misplaced in the batch norm that
    # spatial batch norm calls) is the helper's line; a helper handed the wrong slice of x
    # (statistics over too few values) is the judged function's.
    own = next((i for i in poisoned if by_index[i].function != top and status[i] == "wrong"
                and _own_slip(matches[i]) and all(
                    status[d] in ("right", "blank") for d in by_index[i].deps if d in cone)),
               None)
    if own is not None:
        poisoned = [own]
    elif any(by_index[i].function == top for i in poisoned):
        poisoned = [i for i in poisoned if by_index[i].function == top]

    def fine(d: int) -> bool:  # an input of a line that is not to blame for it
        return status[d] in ("right", "blank") or (
            by_index[d].function != top and by_index[poisoned[0]].function == top)

    def named(i: int) -> str | None:
        name = quantity_for_name(by_index[i].variable)
        return name if name is not None and catalogue.named(name) is not None else None

    def root(i: int) -> bool:  # wrong, from inputs that are all right
        return status[i] == "wrong" and all(fine(d) for d in by_index[i].deps if d in cone)

    swapped = _mislabeled(cone, by_index, matches, catalogue, top)
    if swapped:
        return _swapped_departure(swapped, by_index, matches, catalogue), matches
    choice = next((i for i in poisoned if root(i)), None)
    if choice is None:  # a wrong value a sum happens to hide (the variance branch in dmu)
        choice = next((i for i in sorted(cone) if root(i) and by_index[i].function
                       == by_index[poisoned[0]].function), None)
    if choice is None:
        choice = next((i for i in poisoned if status[i] == "wrong"), None)
    if choice is None:
        choice = next((i for i in poisoned if named(i)), None)
    if choice is None:
        choice = next((i for i in poisoned if all(fine(d) for d in by_index[i].deps
                                                  if d in cone)), poisoned[0])
    choice = _origin_of_copy(choice, by_index, cone, status)
    snapshot = by_index[choice]
    found = matches[choice]
    wrong_match = next((m for m in found if not m.correct), None)
    output_name = next((k for k, v in outputs.items() if v == snapshot.index), None)
    if output_name is not None:  # an output: prefer the variant of that very output
        wrong_match = next((m for m in found if not m.correct and m.quantity.stage == output_name),
                           None) or next((m for m in found if m.correct and m.factor == 1.0),
                                         None) or wrong_match
    dropped = None
    if wrong_match is not None and wrong_match.quantity.missing:
        # the branch was computed (a snapshot holds it) but never used: the departure is the
        # first line after it on the way to the output, where it should have been added
        part = catalogue.named(wrong_match.quantity.missing)
        held = next((s for s in snapshots if s.index not in cone and not s.parameter and any(
            m.quantity is part and m.correct for m in matches[s.index])), None)
        later = [i for i in sorted(cone) if held is not None and i > held.index]
        if later:
            dropped, choice = held, later[0]
            snapshot = by_index[choice]
    if wrong_match is not None and wrong_match.quantity.source is not None:
        # made from a misshapen input (x.reshape(-1, C) without its transpose): the line
        # of the judged function that shapes it is where the math departs
        source = wrong_match.quantity.source
        shaped = next((i for i in sorted(cone) if i < choice and by_index[i].function == top
                       and by_index[i].value.shape == source.shape
                       and np.array_equal(by_index[i].value, source)), None)
        if shaped is not None:
            made = by_index[choice]
            choice, snapshot = shaped, by_index[shaped]
            departure = LineDeparture(
                line=snapshot.line, variable=snapshot.variable, function=snapshot.function,
                stage="x", expected=None, got=snapshot.value, variant=wrong_match.quantity.meaning,
                sentence=(f"line {snapshot.line}, `{snapshot.variable}`: shape "
                          f"{snapshot.value.shape} made from x without the transpose that "
                          f"belongs with it; {made.variable} (line {made.line}) then matches "
                          f"{wrong_match.quantity.meaning}"))
            return departure, matches
    if wrong_match is not None and wrong_match.arrangement and wrong_match.quantity.name == "x":
        # x's values rearranged: what is computed from them says which statistics they make
        later = next((m for i in sorted(cone) if i > choice for m in matches[i]
                      if not m.correct and m.quantity.meaning), None)
        if later is not None:
            sentence = (f"line {snapshot.line}, `{snapshot.variable}`: x's values rearranged "
                        f"into shape {snapshot.value.shape}; what is computed from them then "
                        f"matches {later.quantity.meaning}")
            return LineDeparture(line=snapshot.line, variable=snapshot.variable,
                                 function=snapshot.function, stage="x", expected=None,
                                 got=snapshot.value, variant=later.quantity.meaning,
                                 sentence=sentence, slip=later.quantity.slip), matches
    rows = _rows_for_helper(choice, by_index, matches, top) if wrong_match is not None and \
        not wrong_match.quantity.correct and wrong_match.quantity.meaning.startswith(
            "statistics over") and len(catalogue.spec.x_shape) == 4 else None
    if rows is not None:  # x's values laid out as rows for a 2-D helper: the rows decide
        made = snapshot
        sentence = (f"line {rows.line}, `{rows.variable}`: x's values laid out in shape "
                    f"{rows.value.shape} for the helper, which normalizes along one axis of "
                    f"it; `{made.variable}` (line {made.line}) then matches "
                    f"{wrong_match.quantity.meaning}")
        return LineDeparture(line=rows.line, variable=rows.variable, function=rows.function,
                             stage="x", expected=None, got=rows.value,
                             variant=wrong_match.quantity.meaning, sentence=sentence,
                             slip=wrong_match.quantity.slip), matches
    stage = wrong_match.quantity.stage if wrong_match is not None else named(choice)
    if wrong_match is None and output_name is None and stage in _NEEDS and "forward" in top:
        stage = _stage_it_could_be(stage, _arguments_reached(choice, by_index, top), catalogue)
    if output_name is not None:
        stage = output_name
    expected_q: Quantity | None = catalogue.named(stage) if stage else None
    variant = None if wrong_match is None else _variant_text(wrong_match, n, catalogue)
    if wrong_match is not None and wrong_match.correct and output_name is not None:
        variant = (f"{wrong_match.quantity.name} = {wrong_match.quantity.formula} alone, only "
                   f"a part of {stage}")
    line, function, from_cache = snapshot.line, snapshot.function, False
    if origin is not None and origin_out is not None:
        # the forward's own output is wrong and the backward uses a wrong value from its
        # cache: the departure is the forward's (the backward may well be right for it)
        cached = [i for i in sorted(cone) if not by_index[i].deps and not by_index[i].parameter
                  and status[i] not in ("right", "blank")
                  and any(o.value.shape == by_index[i].value.shape
                          and np.array_equal(o.value, by_index[i].value) for o in origin)]
        if cached:
            inner, _ = locate_departure(origin, {"out": origin_out}, ["out"], catalogue)
            if inner is not None:
                inner.from_cache = True
                head = f"line {inner.line}"
                inner.sentence = (f"{head} ({inner.function}, which makes the cache)"
                                  + _after_head(inner.sentence, head))
                return inner, matches
    if origin is not None and not snapshot.deps:  # unpacked from the cache: find its maker
        maker = next((s for s in origin if s.value.shape == snapshot.value.shape
                      and np.array_equal(s.value, snapshot.value)), None)
        if maker is not None:
            line, function, from_cache = maker.line, maker.function, True
            # where the forward itself departs on the way to the cached value
            inner, _ = locate_departure(origin, {"cached": maker.index}, ["cached"], catalogue)
            if inner is not None and inner.line != line and inner.variant:
                inner.from_cache = True
                inner.sentence = _sentence(inner, catalogue.named(inner.stage or ""),
                                           next(s for s in origin if s.line == inner.line
                                                and s.variable == inner.variable), catalogue)
                return inner, matches
    departure = LineDeparture(line=line, variable=snapshot.variable, function=function,
                              stage=stage, expected=None if expected_q is None else expected_q.value,
                              got=snapshot.value, variant=variant, sentence="",
                              from_cache=from_cache)
    departure.part = any(m.part for m in found)
    if wrong_match is not None:
        departure.slip, departure.count = wrong_match.quantity.slip, wrong_match.quantity.count
    departure.sentence = _sentence(departure, expected_q, snapshot, catalogue)
    if function != top and not from_cache:  # a line of a helper: say whose
        head = f"line {departure.line}"
        departure.sentence = f"{head} (in {function})" + departure.sentence[len(head):]
    if dropped is not None:
        output = by_index[starts[0]]
        departure.stage = wrong_match.quantity.missing
        departure.sentence = (
            f"line {snapshot.line}, `{snapshot.variable}`: {dropped.variable} (line "
            f"{dropped.line}, {wrong_match.quantity.missing} = {part.formula}) is computed but "
            f"never used from here on; {output.variable} (line {output.line}) matches "
            f"{wrong_match.quantity.meaning}")
    if origin is not None and origin_out is not None and departure.variant:
        # the backward is the right derivative of its forward's slip (the same slip in
        # both): the forward's line is where the math departs
        inner, _ = locate_departure(origin, {"out": origin_out}, ["out"], catalogue)
        if inner is not None and inner.variant == departure.variant:
            inner.from_cache = True
            head = f"line {inner.line}"
            if inner.sentence.startswith(head):
                inner.sentence = (f"{head} ({inner.function}, whose slip this backward "
                                  f"repeats)" + _after_head(inner.sentence, head))
            return inner, matches
    return departure, matches


def _after_head(sentence: str, head: str) -> str:
    """The sentence after its "line N" and the "(in helper)" that may follow it."""
    rest = sentence[len(head):]
    return re.sub(r"^ \(in [A-Za-z_][A-Za-z0-9_]*\)", "", rest)


def _own_slip(found: list[Match]) -> bool:
    """A known slip that is wrong whatever slice of x a helper is handed (not statistics
    over some axes, not a layout)."""
    return any(not m.correct and m.quantity.meaning and not m.arrangement and not m.part
               and m.quantity.source is None and not m.quantity.meaning.startswith("statistics")
               and "axis" not in m.quantity.meaning for m in found)


# Arguments a name may hold as they came in (not stages of their own).
_GIVEN_NAMES = {"gamma": "gamma", "beta": "beta", "dout": "dout"}


def _holds_other(snapshot: Snapshot, found: list[Match], catalogue: Catalogue
                 ) -> tuple[str, str] | None:
    """(what the name says, what the value is) when a variable named after one correct
    quantity holds exactly another one (`gamma` holding xmu), else None."""
    said = _GIVEN_NAMES.get(snapshot.variable) or quantity_for_name(snapshot.variable)
    if said is None or catalogue.named(said) is None:
        return None
    if any(m.quantity.name == said and m.correct for m in found):
        return None
    held = next((m.quantity.name for m in found if m.correct and m.factor == 1.0
                 and not m.arrangement and not m.part and m.quantity.name != said), None)
    return None if held is None else (said, held)


def _mislabeled(cone: set[int], by_index: dict[int, Snapshot], matches: dict[int, list[Match]],
                catalogue: Catalogue, top: str) -> list[tuple[Snapshot, str, str]]:
    """Values taken straight out of a container argument (a cache unpacked: the line reads
    no array) into names that say another quantity than they hold, on the way to a wrong
    output."""
    found = []
    for index in sorted(cone):
        snapshot = by_index[index]
        if snapshot.parameter or snapshot.function != top or snapshot.deps:
            continue  # not taken straight out of a container argument (a cache)
        other = _holds_other(snapshot, matches[index], catalogue)
        if other is not None:
            found.append((snapshot, *other))
    return found


def _swapped_departure(swapped: list[tuple[Snapshot, str, str]], by_index: dict[int, Snapshot],
                       matches: dict[int, list[Match]], catalogue: Catalogue) -> LineDeparture:
    """The departure where the cache's values landed in the wrong names."""
    first = swapped[0][0]
    holds = "; ".join(f"`{s.variable}` holds what {held} should ({_formula(catalogue, held)})"
                      for s, _, held in swapped)
    meaning = ("the cache unpacked in another order than the forward packed it"
               if len(swapped) > 1 and len({s.line for s, _, _ in swapped}) == 1 else
               "a value taken under another quantity's name")
    said = swapped[0][1]
    expected = catalogue.named(said)
    sentence = (f"line {first.line}: {holds}: looks like "
                + meaning.replace("the cache unpacked", "the cache is unpacked")
                + (" (compare the order of the forward's cache)" if "cache" in meaning else ""))
    return LineDeparture(line=first.line, variable=first.variable, function=first.function,
                         stage=said, expected=None if expected is None else expected.value,
                         got=first.value, variant=meaning, sentence=sentence,
                         slip="cache-order" if "cache" in meaning else "name-holds-other")


def _formula(catalogue: Catalogue, name: str) -> str:
    quantity = catalogue.named(name)
    return "an input" if quantity is None else quantity.formula


def _rows_for_helper(choice: int, by_index: dict[int, Snapshot], matches: dict[int, list[Match]],
                     top: str) -> Snapshot | None:
    """When `choice` is made from a 2-D array of x's values (some or all of them, rearranged:
    the rows a helper normalizes), that array, if any."""
    made = by_index[choice]
    if made.function != top:
        return None
    read = _reads_of(made, by_index)
    found: dict[bool, Snapshot] = {}
    for index in sorted(by_index):
        snapshot = by_index[index]
        if index >= choice or snapshot.function != top or snapshot.parameter or \
                snapshot.value.ndim != 2:
            continue
        if any(m.quantity.name == "x" for m in matches[index]):  # x's values, laid out anew
            found[snapshot.variable in read] = snapshot
    # the rows the line read; else (results gathered in a list, `np.concatenate(outs)`, which
    # the trace cannot follow) the last rows the function made before it
    return found.get(True) or found.get(False)


def _reads_of(made: Snapshot, by_index: dict[int, Snapshot]) -> set[str]:
    """The variables of the same function whose latest versions `made` depends on."""
    return {by_index[d].variable for d in made.deps
            if d in by_index and by_index[d].function == made.function}


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """The same numbers in another layout (a transpose, a reshape, keepdims)."""
    return a.size == b.size and a.size > 0 and np.array_equal(np.sort(a, axis=None),
                                                              np.sort(b, axis=None))


def _origin_of_copy(choice: int, by_index: dict[int, Snapshot], cone: set[int],
                    status: dict[int, str]) -> int:
    """A line that only turns a wrong value around (`dx = dx_T.T`, a reshape back) is not
    where the math departs: follow it back to the line that computed the value."""
    seen = {choice}
    while True:
        snapshot = by_index[choice]
        source = next((d for d in snapshot.deps if d in cone and d not in seen
                       and status[d] not in ("right", "blank") and not by_index[d].parameter
                       and by_index[d].function == snapshot.function
                       and _same_values(by_index[d].value, snapshot.value)), None)
        if source is None:
            return choice
        seen.add(source)
        choice = source


def _sentence(d: LineDeparture, expected: Quantity | None, snapshot: Snapshot,
              catalogue: Catalogue | None = None) -> str:
    where = f"line {d.line}" + (f" ({d.function}, which makes the cache)" if d.from_cache else "")
    head = f"{where}, `{d.variable}`: "
    if expected is not None:
        head += f"should be {d.stage} = {expected.formula} = {_short(expected.value)}; "
    else:
        head += "matches no correct quantity; "
    value = snapshot.value
    if d.part and expected is not None:
        filled = int(np.count_nonzero(value))
        got = (f"yours is a slice of {filled} values" if value.size == filled else
               f"yours has {filled} of {value.size} values filled so far")
        got += f", {_short(value[value != 0])}"
    else:
        shown_value = _in_layout(value, expected, catalogue)
        got = f"yours is {_short(shown_value)}"
        if value.shape != getattr(expected, "value", value).shape and expected is not None \
                and expected.full and value.size == expected.value.size:
            got += f" (in x's layout; your array has shape {value.shape})"
        if expected is not None and np.shape(shown_value) == expected.value.shape and \
                _short(shown_value) == _short(expected.value):
            # the same digits shown as right and wrong would mislead: say how far apart
            got += (f", off by {difference(shown_value, expected.value):.2g} relative "
                    f"(too small to show in 5 digits)")
    if d.variant:
        return head + got + f": {'they are part of' if d.part else 'it matches'} {d.variant}"
    return head + got + ", which matches none of the known slips"


def _in_layout(value: np.ndarray, expected: Quantity | None,
               catalogue: Catalogue | None) -> np.ndarray:
    """The student's array seen in x's layout (the one of its readings nearest the expected
    value), so that it reads beside the expected one; as it is when it has another size."""
    if expected is None or catalogue is None or not expected.full or \
            value.size != expected.value.size or value.shape == expected.value.shape:
        return value
    from .catalogue import _forms
    forms = [f for f in _forms(np.asarray(value, np.float64), catalogue.spec)[True]
             if f.shape == expected.value.shape]
    if not forms:
        return value
    return min(forms, key=lambda f: float(np.linalg.norm(f - expected.value)))


def stage_records(snapshots: list[Snapshot], matches: dict[int, list[Match]], catalogue: Catalogue,
                  departure: LineDeparture | None) -> list[StageMatch]:
    """For each correct catalogue quantity, the first student line holding it (see StageMatch)."""
    records = []
    for quantity in catalogue.stages():
        hit = next((s for s in snapshots if not s.parameter and any(
            m.quantity is quantity and m.correct for m in matches.get(s.index, []))), None)
        if hit is None and quantity.name == "x":
            hit = next((s for s in snapshots if s.parameter and any(
                m.quantity is quantity for m in matches.get(s.index, []))), None)
        records.append(StageMatch(
            name=quantity.name, formula=quantity.formula,
            line=None if hit is None else hit.line,
            variable=None if hit is None else hit.variable,
            function=None if hit is None else hit.function,
            value=None if hit is None else hit.value, expected=quantity.value,
            matches=hit is not None))
    if departure is not None and departure.stage is not None:
        for record in records:
            if record.name == departure.stage:
                if not record.matches:
                    record.line, record.variable = departure.line, departure.variable
                    record.function, record.value = departure.function, departure.got
                record.departure = True
                break
    return records

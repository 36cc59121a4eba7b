"""Cases for the generated bound and enum tests: for every field DeepSpeed or accelerate bound or enumerate,
a value just outside what they accept (and one just inside, for the drift test to try on the real libraries).

Built from the derived data (``disttune.config.derived``), not from disttune's schema, so that a field the
schema forgot still gets a case; plus the limits DeepSpeed enforces in validator code (``CODE_LIMITS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from disttune.config.deepspeed_schema import CODE_LIMITS
from disttune.config.derived import DEEPSPEED, INFERENCE, accelerate_values, section_fields


@dataclass(frozen=True)
class Case:
    """One value just outside (``bad``) and one just inside (``good``) of what ``section``'s field accepts.

    Attributes:
        section: the derived section path (``zero_optimization.offload_optimizer``, ``<inference>``).
        field: the field's name in DeepSpeed's model; ``spelling``: the key as the case writes it.
        key: the dotted key a finding must name.
    """

    section: str
    field: str
    spelling: str
    bad: object
    good: object

    @property
    def key(self) -> str:
        path = self.section.removeprefix(INFERENCE).lstrip(".")
        return f"{path}.{self.spelling}" if path else self.spelling

    def __str__(self) -> str:
        return f"{self.key}={self.bad!r}"


def _step(kind: str, limit) -> float:
    return 1 if kind == "int" and float(limit).is_integer() else 0.01


def _outside(kind: str, bounds: dict) -> list[tuple[object, object]]:
    """(just outside, just inside) for each limit."""
    cast = int if kind == "int" else float
    out = []
    for op, limit in bounds.items():
        step = _step(kind, limit)
        below, above = cast(limit - step), cast(limit + step)
        out.append(
            {
                "ge": (below, cast(limit)),
                "gt": (cast(limit), above),
                "le": (above, cast(limit)),
                "lt": (cast(limit), below),
            }[op]
        )
    return out


def misspelt(choices: tuple, fold: str = "") -> object:
    """A value close to the first choice that no choice matches (after ``fold``, as the consumer compares)."""
    first = choices[0]
    if isinstance(first, int):
        return max(choices) + 1
    folded = {
        str(c).upper() if fold == "upper" else str(c).lower() if fold == "lower" else str(c) for c in choices
    }
    for candidate in (first.upper(), first[:-1], first + "x"):
        check = candidate.upper() if fold == "upper" else candidate.lower() if fold == "lower" else candidate
        if check not in folded:
            return candidate
    raise AssertionError(choices)


def _field_cases(section: str, name: str, spec: dict) -> list[Case]:
    spellings = [name] + ([spec["alias"]] if spec.get("alias") else [])
    pairs = []
    if "choices" in spec:
        pairs.append((misspelt(tuple(spec["choices"])), spec["choices"][0]))
    pairs += _outside(spec["type"], spec.get("bounds", {}))
    return [Case(section, name, spelling, bad, good) for bad, good in pairs for spelling in spellings]


def deepspeed_cases() -> list[Case]:
    """Every bounded or enumerated field of every section DeepSpeed validates (training and inference)."""
    cases = []
    for section in DEEPSPEED["sections"]:
        for name, spec in section_fields(section).items():
            code = CODE_LIMITS.get(f"{section}.{name}", {})
            spec = {
                **spec,
                **({"bounds": dict(code["bounds"])} if "bounds" in code else {}),
                **({"choices": list(code["choices"])} if "choices" in code else {}),
            }
            if "deprecated" not in spec:
                cases += _field_cases(section, name, spec)
    return cases


def nest(case: Case, base: dict) -> dict:
    """A config holding ``case.bad`` at its key, on top of ``base``."""
    config = {**base}
    *parents, last = case.key.split(".")
    node = config
    for part in parents:
        node[part] = dict(node.get(part, {}))
        node = node[part]
    node[last] = case.bad
    return config


# accelerate config keys whose values accelerate enforces, with the values (derived) and how it folds them.
ACCELERATE_ENUMS = {
    "distributed_type": ("DistributedType", ""),
    "mixed_precision": ("PrecisionType", "lower"),
    "compute_environment": ("ComputeEnvironment", ""),
    "dynamo_config.dynamo_backend": ("DynamoBackend", "upper"),
    "dynamo_backend": ("DynamoBackend", "upper"),
    "fsdp_config.fsdp_sharding_strategy": ("FSDP_SHARDING_STRATEGY", "upper"),
    "fsdp_config.fsdp_auto_wrap_policy": ("FSDP_AUTO_WRAP_POLICY", "upper"),
    "fsdp_config.fsdp_backward_prefetch": ("FSDP_BACKWARD_PREFETCH", "upper"),
    "fsdp_config.fsdp_state_dict_type": ("FSDP_STATE_DICT_TYPE", "upper"),
    # DeepSpeed's runner lower-cases --launcher
    "deepspeed_config.deepspeed_multinode_launcher": ("DEEPSPEED_MULTINODE_LAUNCHERS", "lower"),
}


def accelerate_cases() -> list[tuple[str, str, object]]:
    """(dotted key, the enum or constant it takes its values from, a misspelt value) for each enforced key."""
    return [
        (key, name, misspelt(accelerate_values(name), fold)) for key, (name, fold) in ACCELERATE_ENUMS.items()
    ]


def name_cases() -> list[tuple[str, str]]:
    """(``optimizer.type`` / ``scheduler.type``, a name DeepSpeed cannot build): it builds its own names (the
    optimizers compared in lower case) and torch's classes of the same name."""
    out = []
    for block, names in (("optimizer", DEEPSPEED["optimizers"]), ("scheduler", DEEPSPEED["schedulers"])):
        known = set(names["torch"]) | set(names["deepspeed"]) | {n.upper() for n in names["deepspeed"]}
        bad = next(n + "x" for n in names["torch"] if n + "x" not in known)
        out.append((f"{block}.type", bad))
    return out

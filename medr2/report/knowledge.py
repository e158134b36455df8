"""Radiology knowledge as data: the perception tree and the sign -> finding rules.

Loads `medr2/report/knowledge.yaml` once and hands on typed views of it:
- `perception_tree()`: regions in reading order, the features to check there and the findings they can
  indicate (limits and orders where the model looks, as in Med-R2);
- `rules()` / `rule(rule_id)`: short textbook statements a reasoning step cites as `[rule: <id>]`;
- `prompt_knowledge_text()`: the same knowledge rendered for the system prompt of a general LVLM;
- `prompted_system_prompt()`: that whole system prompt (the "prompted mode" for off-the-shelf instruct LVLMs).
The trace builder, the prompted mode and the UI all read this one file, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from medr2.labeler.findings import OBSERVATIONS
from medr2.report.schema import SCHEMA_TAGS


@dataclass(frozen=True)
class Region:
    name: str
    features: tuple[str, ...]
    findings: tuple[str, ...]
    zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    rule_id: str
    observation: str
    statement: str


@lru_cache(maxsize=1)
def _raw() -> dict:
    text = resources.files("medr2.report").joinpath("knowledge.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    _validate(data)
    return data


def _validate(data: dict) -> None:
    # Fail at load time, naming the bad entry, rather than letting a typo reach a training trace.
    for region in data["perception_tree"]:
        for obs in region["findings"]:
            if obs not in OBSERVATIONS:
                raise ValueError(f"knowledge.yaml: region {region['region']!r} names unknown observation {obs!r}")
    for rule_id, rule_ in data["rules"].items():
        if rule_["observation"] not in OBSERVATIONS:
            raise ValueError(f"knowledge.yaml: rule {rule_id!r} names unknown observation {rule_['observation']!r}")


def perception_tree() -> tuple[Region, ...]:
    """Regions in reading order (heart, mediastinum, lungs by side and zone, hila, pleura, bones, devices)."""
    return tuple(
        Region(r["region"], tuple(r["features"]), tuple(r["findings"]), tuple(r.get("zones", ())))
        for r in _raw()["perception_tree"]
    )


def rules() -> dict[str, Rule]:
    """All sign -> finding rules by id."""
    return {rid: Rule(rid, r["observation"], r["statement"]) for rid, r in _raw()["rules"].items()}


def rule(rule_id: str) -> Rule | None:
    """One rule by id, or None for an id the knowledge base does not know (e.g. a model's invention)."""
    return rules().get(rule_id)


def prompt_knowledge_text() -> str:
    """The perception tree and rules as plain text for a general LVLM's system prompt."""
    lines = ["Read the film region by region, in this order:"]
    for region in perception_tree():
        where = f" ({', '.join(region.zones)} zones)" if region.zones else ""
        lines.append(f"- {region.name}{where}: check {', '.join(region.features)}; may indicate {', '.join(region.findings)}.")
    lines.append("Interpret what you see with these rules (cite the id as [rule: id]):")
    lines += [f"- {r.rule_id}: {r.statement}" for r in rules().values()]
    return "\n".join(lines)


def prompted_system_prompt() -> str:
    """System prompt that makes an instruct LVLM answer in the Med-R2 schema, with radiology knowledge.

    The line formats are the ones `medr2.report.schema.parse` reads into structured items (free text still parses).
    """
    tags = " ".join(SCHEMA_TAGS)
    return f"""You are an expert radiologist reading one chest radiograph. Perceive, reason, draft, reflect, report.
Answer with exactly this structure and these tags ({tags}), nothing before or after it:
<think>
<perception>
one line per region, "region: what you see", pertinent normal findings included, e.g.
heart: cardiothoracic ratio about 0.46, normal heart size.
</perception>
<reasoning>
one line per sign, "sign -> finding [rule: id]", hedged when the sign is subtle, e.g.
blunted right costophrenic angle with meniscus -> small right pleural effusion [rule: effusion_meniscus]
</reasoning>
<draft>
Findings: ... Impression: ...
</draft>
<reflection>
re-inspect the region behind every finding and every subtle sign, one line each, "action: finding - why",
action one of kept, revised, removed, added, e.g.
kept: pleural effusion - re-checked the right base, meniscus confirmed.
when a line <look>region</look> ends your turn you are shown a magnified crop of that region next: write one line
about what the crop shows there, e.g. "added: pulmonary nodule - magnified right mid zone: round opacity, missed in
the draft.", then continue (another <look>region</look>, or the rest of the answer)
</reflection>
</think>
<report>
Findings: ... Impression: ...
</report>

Radiology knowledge to use:
{prompt_knowledge_text()}

Name the side (right / left) and zone (upper / mid / lower) of every lung finding. If the film is normal,
say so plainly. Do not invent clinical history."""

"""hardmix.layout against csrc/kernels/policy_layout.h: every position the Python
side uses is the one the native code numbers in its enums."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hardmix import config, layout

LAYOUT_H = Path(__file__).resolve().parents[1] / "csrc" / "kernels" / "policy_layout.h"

# Each enum of policy_layout.h: its enumerators and the hardmix.layout constants.
ENUMS = {
    "Col": {"kLastLoss": "COL_LAST_LOSS", "kEma": "COL_EMA", "kSeen": "COL_SEEN", "kLastSeen": "COL_LAST_SEEN",
            "kCorrect": "COL_CORRECT", "kForget": "COL_FORGET", "kWrong": "COL_WRONG",
            "kQuarantine": "COL_QUARANTINE"},
    "SlotField": {"kIndex": "SLOT_INDEX", "kKey": "SLOT_KEY", "kLogp": "SLOT_LOGP", "kStep": "SLOT_STEP",
                  "kClass": "SLOT_CLASS", "kAdmitted": "SLOT_ADMITTED", "kBestLoss": "SLOT_BEST_LOSS",
                  "kTicket": "SLOT_TICKET"},
    "Counter": {"kT": "CTR_T", "kTRef": "CTR_T_REF", "kNonfinite": "CTR_NONFINITE", "kAdmittedTotal": "CTR_ADMITTED",
                "kEvictedTotal": "CTR_EVICTED", "kGraduatedTotal": "CTR_GRADUATED",
                "kQuarantinedTotal": "CTR_QUARANTINED", "kWindowCount": "CTR_WIN_COUNT",
                "kWindowHead": "CTR_WIN_HEAD", "kFreeTop": "CTR_FREE_TOP", "kErrorCode": "CTR_ERR_CODE",
                "kErrorAt": "CTR_ERR_AT", "kErrorValue": "CTR_ERR_VALUE"},
    "BalanceField": {"kBalFresh": "COL_FRESH", "kBalSeen": "COL_SEEN_CLASS", "kBalFactor": "COL_FACTOR"},
    "HeapClassField": {"kClassRoot": "CLASS_ROOT", "kClassCount": "CLASS_COUNT"},
}
# Enums whose Python side is a tuple of names: the tuple, and each C++
# enumerator's name in it.
NAMED = {
    "Link": (layout.LINK_FIELDS, {"kLeft": "left", "kRight": "right", "kParent": "parent", "kNpl": "npl"}),
    "ErrorCode": (("none",) + layout.ERROR_CODES, {
        "kErrNone": "none", "kErrIndex": "index", "kErrClass": "class", "kErrNegative": "negative",
        "kErrNonfinite": "nonfinite", "kErrExclude": "exclude"}),
    "Score": (config.SCORES, {
        "kScoreLoss": "loss", "kScoreMargin": "margin", "kScoreRank": "loss_rank",
        "kScoreForgetting": "forgetting", "kScoreGiven": "given"}),
    "ConfigField": (layout.CONFIG_FIELDS, {
        "kAlpha": "alpha", "kLam": "lam", "kGamma": "gamma", "kEmaBeta": "ema_beta", "kGraduation": "graduation",
        "kMaxWrong": "max_wrong", "kQuarantineSteps": "quarantine_steps", "kMaxNew": "max_new_per_step",
        "kScore": "score", "kForgetBoost": "forget_boost", "kQuotas": "class_quotas", "kNumClasses": "num_classes",
        "kRaiseNonfinite": "raise_nonfinite", "kShardWorld": "shard_world", "kShardRank": "shard_rank",
        "kNumExamples": "num_examples", "kBalanceReplay": "balance_replay", "kReweightEvery": "reweight_every"}),
}
# policy_layout.h's sizes and constants, and their Python values.
CONSTANTS = {
    "kTableCols": len(layout.TABLE_COLUMNS),
    "kSlotFields": len(layout.SLOT_FIELDS),
    "kLinkFields": len(layout.LINK_FIELDS),
    "kHeapClassFields": len(layout.HEAP_CLASS_FIELDS),
    "kBalanceFields": len(layout.BALANCE_COLUMNS),
    "kCounters": layout.N_COUNTERS,
    "kConfigFields": layout.N_CONFIG,
    "kStreamAdmit": config.STREAM_ADMIT,
    "kStreamReplay": config.STREAM_REPLAY,
    "kRebaseExponent": config.REBASE_EXPONENT,
    "kMaxWeightExponent": config.MAX_WEIGHT_EXPONENT,
    "kBalanceDecay": config.BALANCE_DECAY,
}


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _source() -> str:
    return _strip_comments(LAYOUT_H.read_text())


def parse_enums(text: str) -> dict[str, list[tuple[str, int]]]:
    """Each `enum Name { a, b = 3, c };` as [(a, 0), (b, 3), (c, 4)]."""
    out = {}
    for name, body in re.findall(r"\benum\s+(\w+)\s*\{([^}]*)\}", text):
        value, items = -1, []
        for item in filter(None, (x.strip() for x in body.split(","))):
            key, _, given = (p.strip() for p in item.partition("="))
            value = int(given) if given else value + 1
            items.append((key, value))
        out[name] = items
    return out


def parse_constants(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"\bconstexpr\s+\w+\s+(k\w+)\s*=\s*([-0-9.e]+)\s*;", text)}


CPP_ENUMS = parse_enums(_source())


def test_the_parser_reads_explicit_values():
    got = parse_enums(_strip_comments("enum E { kA, kB = 5,  // kX, kY\n kC };"))
    assert got == {"E": [("kA", 0), ("kB", 5), ("kC", 6)]}


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_positions_match_the_native_enum(enum):
    names = ENUMS[enum]
    cpp = CPP_ENUMS[enum]
    assert sorted(k for k, _ in cpp) == sorted(names), f"policy_layout.h {enum}: {[k for k, _ in cpp]}"
    for key, value in cpp:
        got = getattr(layout, names[key])
        assert got == value, f"hardmix.layout.{names[key]} = {got}, but policy_layout.h {key} = {value}"


@pytest.mark.parametrize("enum", sorted(NAMED))
def test_named_fields_match_the_native_enum(enum):
    fields, names = NAMED[enum]
    cpp = CPP_ENUMS[enum]
    assert sorted(k for k, _ in cpp) == sorted(names), f"policy_layout.h {enum}: {[k for k, _ in cpp]}"
    assert len(fields) == len(cpp), f"policy_layout.h {enum} has {len(cpp)} entries, Python {len(fields)}"
    for key, value in cpp:
        assert fields[value] == names[key], f"policy_layout.h {key} = {value}, but Python's [{value}] is {fields[value]!r}"


def test_sizes_and_constants_match():
    cpp = parse_constants(_source())
    for k, v in CONSTANTS.items():
        assert k in cpp, f"policy_layout.h defines no {k}"
        assert cpp[k] == v, f"policy_layout.h {k} = {cpp[k]}, Python {v}"
    assert len(layout.COUNTERS) <= layout.N_COUNTERS
    assert len(layout.CONFIG_FIELDS) <= layout.N_CONFIG


def test_every_position_constant_is_checked():
    covered = {name for names in ENUMS.values() for name in names.values()}
    positions = {k for k in vars(layout) if re.fullmatch(r"(COL|SLOT|CTR|CLASS)_[A-Z_]+", k) and isinstance(getattr(layout, k), int)}
    assert positions == covered

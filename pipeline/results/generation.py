"""The generation figures of a language model's artifacts (issue 24): time to first token, decode tokens/s and peak
memory as the runner measured them on the device, and whether greedy decoding matched PyTorch's. Read by the report,
its plot and the model card, so the three say the same thing."""

from __future__ import annotations

from typing import Any


def generation(art: dict[str, Any]) -> dict[str, Any] | None:
    """The artifact's generation record, or None for an artifact (or a model) that does not generate."""
    rec = art.get("generation")
    return rec if isinstance(rec, dict) else None


def stat(rec: dict[str, Any] | None, key: str, which: str = "p50") -> float | None:
    value = ((rec or {}).get(key) or {}).get(which) if isinstance((rec or {}).get(key), dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def tokens_per_s(art: dict[str, Any], which: str = "p50") -> float | None:
    """Decode speed of a generation that met its own measurement rules; None otherwise (an invalid figure is not
    plotted as if it were one)."""
    rec = generation(art)
    if rec is None or rec.get("valid") is not True:
        return None
    return stat(rec, "decode_tokens_per_s", which)


def any_generation(artifacts: list[dict[str, Any]]) -> bool:
    return any(generation(a) is not None for a in artifacts)


def describe(rec: dict[str, Any]) -> dict[str, str]:
    """Table cells of one generation record (ms, tokens/s, MiB), '-' where the device did not report a figure."""
    def num(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    ttft, tps = rec.get("ttft_ms") or {}, rec.get("decode_tokens_per_s") or {}
    match = rec.get("greedy_matches_torch")
    agreement = rec.get("greedy_agreement")
    if match is True:
        greedy = "matches PyTorch"
    elif isinstance(agreement, (int, float)):
        greedy = f"{agreement:.0%} of tokens as PyTorch"
    elif match is False:
        greedy = "DIFFERS from PyTorch"
    else:
        greedy = "-"
    return {"prompt": f"{rec.get('prompt_len', '-')} + {rec.get('new_tokens', '-')} tokens",
            "ttft": f"{num(stat(rec, 'ttft_ms'), 2)} / {num(stat(rec, 'ttft_ms', 'p90'), 2)}",
            "tps": f"{num(stat(rec, 'decode_tokens_per_s'))} / {num(stat(rec, 'decode_tokens_per_s', 'p90'))}",
            "n": f"{ttft.get('n', '-')} / {tps.get('n', '-')}",
            "rss": num(rec.get("peak_rss_mb") if isinstance(rec.get("peak_rss_mb"), (int, float)) else None),
            "valid": "valid" if rec.get("valid") is True else f"invalid: {rec.get('why') or 'no reason given'}",
            "greedy": greedy}

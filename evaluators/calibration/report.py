"""The fixed-width table ``assay calibrate`` prints."""

from __future__ import annotations

from evaluators.calibration.run import CalibrationResult


def _pct(x: float | None, ci: tuple[float, float] | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{x:.2f}"


def format_table(result: CalibrationResult) -> str:
    """A fixed-width table: per label, the previous and fitted operating points and the held-out one."""
    head = ("label", "field", "engine", "n", "pos", "", "threshold", "precision [95% CI]", "recall [95% CI]")
    rows: list[tuple[str, ...]] = [head]
    notes: list[str] = []
    for r in result.labels:
        b, a = r.before.point(), r.after.point()
        ident = (r.column, r.field.dotted, r.engine, str(r.n), str(r.positives))
        blank = ("",) * len(ident)
        rows.append(
            (
                *ident,
                "before",
                f"{b.threshold:g}",
                _pct(b.precision, b.precision_ci),
                _pct(b.recall, b.recall_ci),
            )
        )
        mark = "after" if r.reached else "after*"
        rows.append(
            (*blank, mark, f"{a.threshold:g}", _pct(a.precision, a.precision_ci), _pct(a.recall, a.recall_ci))
        )
        if r.held_out is not None:
            h = r.held_out
            rows.append(
                (
                    *blank,
                    f"{h.folds}-fold",
                    "refit",
                    _pct(h.precision, h.precision_ci),
                    _pct(h.recall, h.recall_ci),
                )
            )
        if not r.reached:
            notes.append(
                f"* {r.column} ({r.field.dotted}): target {result.target} not reachable; kept {b.threshold:g}"
            )
        if r.scaling is not None:
            s = r.scaling
            verdict = (
                f"{s.best} would lower the held-out Brier score from {s.brier['raw']:.3f} "
                f"to {s.brier[s.best]:.3f}"
                if s.best != "raw"
                else f"raw scores are already best (Brier {s.brier['raw']:.3f})"
            )
            notes.append(
                f"scaling {r.column} ({r.field.dotted}): {verdict}; Brier raw/Platt/isotonic "
                f"{s.brier['raw']:.3f}/{s.brier['platt']:.3f}/{s.brier['isotonic']:.3f}, log-loss "
                f"{s.log_loss['raw']:.3f}/{s.log_loss['platt']:.3f}/{s.log_loss['isotonic']:.3f} "
                "(reported only: a monotone rescaling selects the same texts at the fitted threshold)"
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(
        [f"target {result.target}; {len(result.data.rows)} rows from {result.data.file}", *lines, *notes]
    )

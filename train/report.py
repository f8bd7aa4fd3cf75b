"""The evaluation's outputs: the result table (JSON and CSV), the summary and the Markdown
report. They only read rows and the summary; nothing here runs a job."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.atomic import atomic_write_text
from misical_gym.train.plots import write_plots

RESULT_FIELDS = ("target", "target_id", "policy", "seed", "target_pixels", "hit_rate", "iou")


def write_outputs(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    table = [{k: r[k] for k in RESULT_FIELDS} for r in rows]
    atomic_write_text(out / "results.json", json.dumps(table, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    lines = [
        "# MiSiCAL evaluation",
        "",
        "Target pixels acquired per episode of picks, mean over seeds; a policy beats random on a "
        "class when its mean is higher (significant: one-sided Mann–Whitney U, p <= 0.05).",
        "",
        "| policy | beats random | significant | classes |",
        "|---|---|---|---|",
    ]
    for policy, row in summary["policies"].items():
        lines.append(
            f"| {policy} | {row['beats_random']} | {row['beats_random_significant']} | "
            f"{row['classes']} |"
        )
    if any("iou" in row for row in summary["policies"].values()):
        lines += [
            "",
            retraining_heading(
                summary.get("retrain_epochs"),
                summary.get("retrain_learning_rate"),
                summary.get("retrain_weighting"),
                summary.get("retrain_weights_from"),
            ),
            "",
            "The target's IoU on the test split after the segmenter is fine-tuned on init plus "
            "the picks (labelled inside the picked patches only), compared with random the "
            "same way; mean IoU over classes and seeds.",
            "",
            "| policy | beats random | significant | classes | mean IoU |",
            "|---|---|---|---|---|",
        ]
        for policy, row in summary["policies"].items():
            if "iou" not in row:
                continue
            iou = row["iou"]
            measured = [r["iou"] for r in rows if r["policy"] == policy and r["iou"] is not None]
            mean = f"{np.mean(measured):.3f}" if measured else "-"
            lines.append(
                f"| {policy} | {iou['beats_random']} | {iou['beats_random_significant']} | "
                f"{iou['classes']} | {mean} |"
            )
    lines += _per_class_table(rows, summary)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    write_plots(out, rows, summary)


def retraining_heading(
    epochs: Any, learning_rate: Any, weighting: Any, weights_from: Any = None
) -> str:
    """The heading of a report's IoU-after-retraining section, naming the fine-tuning."""
    settings = f"{epochs} epochs"
    if learning_rate is not None:  # summaries of before the setting name the epochs only
        settings += f", learning rate {learning_rate:g}, {weighting} class weights"
    if weights_from == "init":  # the default, the crops' labels, goes unnamed as before
        settings += " from the init labels"
    return f"## IoU after retraining ({settings})"


def _per_class_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Markdown: per class and policy, mean target pixels over seeds (and mean IoU, if any)."""
    policies = list(summary["policies"])
    rare = set(summary.get("rare_class_names", []))
    lines = [
        "",
        "## Per class",
        "",
        "Mean target pixels over seeds (mean IoU after retraining in brackets, where measured); "
        "rare classes in bold.",
        "",
        "| class | " + " | ".join(policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for target in summary["targets"]:
        cells = []
        for policy in policies:
            mine = [r for r in rows if r["target"] == target and r["policy"] == policy]
            if not mine:
                cells.append("-")
                continue
            cell = f"{np.mean([r['target_pixels'] for r in mine]):.0f}"
            ious = [r["iou"] for r in mine if r["iou"] is not None]
            cells.append(cell + (f" ({np.mean(ious):.3f})" if ious else ""))
        name = f"**{target}**" if target in rare else target
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines

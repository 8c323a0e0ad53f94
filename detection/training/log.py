"""The training log: every stage's messages in ``work_dir/train.log``, the important ones on the console too."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


class TrainingLog:
    """Appends each message to ``path`` (reopened per line, so a killed run's log is complete) and
    passes it to ``console`` unless told otherwise."""

    def __init__(self, path: Path, console: Callable[[str], None] = print):
        self.path = path
        self.console = console

    def __call__(self, message: str, console: bool = True) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(message + "\n")
        if console:
            self.console(message)


def format_svm_retrain(entry: dict, classes: tuple[str, ...]) -> str:
    """One hard-negative retrain as a log line (R-CNN's console output)."""
    return (f"svm {classes[entry['class']]}: retrain after image {entry['image']} ({entry['reason']}): "
            f"{entry['n_pos']} positives, {entry['n_neg']} negatives ({entry['n_added']} new, "
            f"{entry['n_evicted']} evicted after), loss {entry['total']:.4f} = {entry['pos']:.4f} (pos) + "
            f"{entry['neg']:.4f} (neg) + {entry['reg']:.4f} (reg)")


def summarise_svm_history(history: list[dict], classes: tuple[str, ...]) -> str:
    """One line per class: retrains, final positives/negatives and objective (R-CNN's log, condensed)."""
    lines = []
    for label, name in enumerate(classes):
        entries = [h for h in history if h["class"] == label]
        if entries:
            last = entries[-1]
            lines.append(f"svm {name}: {len(entries)} retrain(s), {last['n_pos']} positives, "
                         f"{last['n_neg']} cached negatives, objective {last['total']:.4f}")
        else:
            lines.append(f"svm {name}: not trained (no positives)")
    return "\n".join(lines)

"""The benchmark's report: speedups over R-CNN and the paper-shaped Markdown tables (recipe §11)."""
from __future__ import annotations


def speedups(report: dict, clock: str) -> dict[str, float]:
    """Speedups over R-CNN (total and conv only), against SPP-net's times on R-CNN's images (its
    ``"first"`` entry when R-CNN ran on fewer), and SPP's total / conv over all its images, by wall
    (``""``) or ``"cpu"`` time."""
    def times(row):
        return row[clock] if clock else row

    rcnn, ratios = times(report["rcnn"]), {}
    for suffix in ("1scale", "5scale"):
        row = report[f"spp_{suffix}"]
        spp, same_images = times(row), times(row.get("first", row))
        ratios.update({f"speedup_{suffix}": rcnn["total"] / same_images["total"],
                       f"speedup_conv_{suffix}": rcnn["conv"] / same_images["conv"],
                       f"overhead_{suffix}": spp["total"] / spp["conv"]})
    return ratios


_LABELS = {"rcnn": "R-CNN", "spp_1scale": "SPP-net 1-scale", "spp_5scale": "SPP-net 5-scale"}


def format_report(report: dict) -> str:
    """The report as Markdown tables shaped like the paper's (recipe §11), seconds per image:
    wall-clock time, then the process's CPU time."""
    amp = f" (conv in {report['amp']}, channels_last)" if report.get("amp", "off") != "off" else ""
    lines = [f"{report['backbone']}{amp}, {report['device']}, {report['proposals_per_image']:.0f} windows per image "
             f"(seconds per image; R-CNN on {report['rcnn_images']} of {report['images']} image(s))"]
    if report["rcnn_images"] < report["images"]:
        lines.append(f"speedups: R-CNN against SPP-net on the same {report['rcnn_images']} image(s) "
                     f"({report.get('rcnn_proposals_per_image', report['proposals_per_image']):.0f} windows per image)")
    for clock, title in (("", "wall clock"), ("cpu", "process CPU time (all threads)")):
        lines += ["", f"{title}:", "", _table(report, clock)]
    lines += ["", f"proposals (selective search, not in the totals): {report['proposal_seconds']:.3f} s per image, "
              f"{report['proposals_found_per_image']:.0f} windows found on average"]
    if report.get("svm_pass_fraction") is not None:
        lines.append(f"untrained detector: random SVMs passing {report['svm_pass_fraction']:.0%} of (window, class) "
                     "pairs into NMS")
    return "\n".join(lines)


def _table(report: dict, clock: str) -> str:
    """One Markdown table of the three modes by wall (``""``) or ``"cpu"`` time; memory with the wall one."""
    def mib(value):
        return "–" if value is None else f"{value:.0f}"

    ratios = report["cpu_time"] if clock else report
    memory = "" if clock else " peak RSS MiB | peak GPU MiB |"
    lines = ["| method | scales | images | conv | pool + fc | SVM + NMS + bbox | total | total / conv "
             "| speedup (conv) | speedup (total) |" + memory,
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if memory else "")]
    for key in ("rcnn", "spp_1scale", "spp_5scale"):
        row = report[key]
        times = row[clock] if clock else row
        suffix = key.removeprefix("spp_")
        speedups = ("1×", "1×") if key == "rcnn" else (f"{ratios[f'speedup_conv_{suffix}']:.1f}×",
                                                        f"{ratios[f'speedup_{suffix}']:.1f}×")
        scales = f"{row['crop_size']}² crops" if key == "rcnn" else ",".join(str(s) for s in row["scales"])
        line = (f"| {_LABELS[key]} | {scales} | {row['images']} | {times['conv']:.4f} | {times['pool_fc']:.4f} "
                f"| {times['svm_nms_bbox']:.4f} | {times['total']:.4f} | {times['total'] / times['conv']:.2f} "
                f"| {speedups[0]} | {speedups[1]} |")
        lines.append(line + (f" {mib(row['peak_cpu_rss_mb'])} | {mib(row['peak_gpu_mb'])} |" if memory else ""))
    return "\n".join(lines)

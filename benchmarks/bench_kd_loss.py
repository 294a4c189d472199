"""Measure peak memory and time of kd_loss against a naive full-softmax loss.

Run from the repository root::

    python benchmarks/bench_kd_loss.py               # writes docs/benchmarks.md
    python benchmarks/bench_kd_loss.py --sweep       # adds a chunk-size sweep
    python benchmarks/bench_kd_loss.py --threads 1   # on cores shared with others

Each case (implementation, divergence, shape, device) runs forward and backward in a
fresh child process, so that one case's allocator state cannot hide another's peak.

"Extra memory" is the peak during forward and backward minus the two fp32 logits
tensors and the gradient of the student logits, which every implementation holds.
On CPU the child allocates the inputs and a gradient-sized tensor, frees the latter,
and reads the high-water mark of its resident set size (``ru_maxrss``) before and
after forward and backward. The difference is the peak above inputs plus gradient.
On CUDA it reads ``torch.cuda.max_memory_allocated``.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.results_page import write_section  # noqa: E402
from pocl_axolotl.losses import (  # noqa: E402
    DEFAULT_CHUNK_SIZE,
    DIVERGENCES,
    IGNORE_INDEX,
    kd_loss,
)

SECTION_HEADING = "## KD loss: memory and time"
SHAPES = ((4, 512, 32000), (1, 512, 152064))
SWEEP_CHUNK_SIZES = (8, 16, 32, 64, 128, 512)
SWEEP_DIVERGENCES = ("forward_kl", "jsd")
TEMPERATURE = 2.0
MIB = 2**20


# --- Naive reference, the same as in tests/test_losses.py -----------------------------


def naive_divergence(log_q, log_p, loss, jsd_beta=0.5, skew_alpha=0.1):
    """Compute the per-position divergence from (B, T, V) fp32 log-probs as defined."""
    q = log_q.exp() if loss != "forward_kl" else None
    p = log_p.exp() if loss != "reverse_kl" else None
    if loss == "forward_kl":
        return (p * (log_p - log_q)).sum(-1)
    if loss == "reverse_kl":
        return (q * (log_q - log_p)).sum(-1)
    if loss == "jsd":
        m = jsd_beta * p + (1 - jsd_beta) * q
        log_m = m.log()
        kl_p_m = (p * (log_p - log_m)).sum(-1)
        kl_q_m = (q * (log_q - log_m)).sum(-1)
        return jsd_beta * kl_p_m + (1 - jsd_beta) * kl_q_m
    if loss == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if loss == "skew_forward_kl":
        log_r = (skew_alpha * p + (1 - skew_alpha) * q).log()
        return (p * (log_p - log_r)).sum(-1)
    if loss == "skew_reverse_kl":
        log_r = (skew_alpha * q + (1 - skew_alpha) * p).log()
        return (q * (log_q - log_r)).sum(-1)
    raise ValueError(f"Invalid loss {loss!r}: expected one of {DIVERGENCES}.")


def naive_kd_loss(student_logits, teacher_logits, labels, *, loss, temperature):
    """Compute the loss with a full fp32 softmax over (B, T, V) and a label mask."""
    vocab_size = min(student_logits.shape[-1], teacher_logits.shape[-1])
    student = student_logits[:, :-1, :vocab_size].float() / temperature
    teacher = teacher_logits[:, :-1, :vocab_size].detach().float() / temperature
    log_q = torch.log_softmax(student, dim=-1)
    log_p = torch.log_softmax(teacher, dim=-1)
    values = naive_divergence(log_q, log_p, loss)
    mask = labels[:, 1:] != IGNORE_INDEX
    return (values * mask).sum() / mask.sum() * temperature**2


# --- Child process: one case ----------------------------------------------------------


def make_inputs(batch, length, vocab, device):
    """Return fp32 logits and labels whose first 32 targets of each row are -100."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch, length, vocab, generator=generator).mul_(2)
    teacher = torch.randn(batch, length, vocab, generator=generator).mul_(2)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[:, :32] = IGNORE_INDEX
    return student.to(device), teacher.to(device), labels.to(device)


def run_case(implementation, loss, shape, device, chunk_size, repeats):
    """Measure one case in this process and return its results as a dict."""
    function = naive_kd_loss if implementation == "naive" else kd_loss
    options = {"loss": loss, "temperature": TEMPERATURE}
    if implementation == "ours":
        options["chunk_size"] = chunk_size

    def forward_backward(student, teacher, labels):
        student.grad = None
        function(student, teacher, labels, **options).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    # Warm-up on a small input loads lazily initialised kernels before the baseline.
    small = make_inputs(1, 40, shape[2], device)
    forward_backward(small[0].requires_grad_(True), small[1], small[2])
    del small

    student, teacher, labels = make_inputs(*shape, device)
    student.requires_grad_(True)
    grad_bytes = student.numel() * student.element_size()

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        forward_backward(student, teacher, labels)
        extra_bytes = torch.cuda.max_memory_allocated() - baseline - grad_bytes
    else:
        # ru_maxrss is a high-water mark in KiB. Touching a gradient-sized tensor
        # first makes the baseline include the gradient that backward allocates.
        placeholder = torch.ones_like(student, requires_grad=False)
        del placeholder
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        forward_backward(student, teacher, labels)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extra_bytes = (peak_kib - baseline_kib) * 1024

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward(student, teacher, labels)
        seconds.append(time.perf_counter() - start)
    return {"extra_mib": extra_bytes / MIB, "seconds": min(seconds)}


def measure_in_child(implementation, loss, shape, device, chunk_size, arguments):
    """Run one case in a fresh Python process and return its results."""
    command = [
        sys.executable,
        __file__,
        "--child",
        implementation,
        loss,
        ",".join(map(str, shape)),
        device,
        str(chunk_size),
        str(arguments.repeats),
    ]
    environment = dict(os.environ)
    if arguments.threads is not None:
        environment["OMP_NUM_THREADS"] = str(arguments.threads)
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, env=environment
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"Benchmark case {command[3:]} failed with exit code "
            f"{completed.returncode}:\n{completed.stderr}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- Parent process: tables and docs --------------------------------------------------


def format_shape(shape):
    return "x".join(map(str, shape))


def compare_divergences(devices, arguments):
    """Measure naive and ours for every divergence and shape, and return the rows."""
    rows = []
    for device in devices:
        for shape in SHAPES:
            for loss in DIVERGENCES:
                naive = measure_in_child("naive", loss, shape, device, 0, arguments)
                ours = measure_in_child(
                    "ours", loss, shape, device, arguments.chunk_size, arguments
                )
                row = (
                    f"| {loss} | {format_shape(shape)} | {device} "
                    f"| {naive['extra_mib']:.0f} | {ours['extra_mib']:.0f} "
                    f"| {ours['extra_mib'] / naive['extra_mib']:.3f} "
                    f"| {naive['seconds']:.2f} | {ours['seconds']:.2f} "
                    f"| {ours['seconds'] / naive['seconds']:.2f} |"
                )
                print(row, flush=True)
                rows.append(row)
    return rows


def sweep_chunk_sizes(devices, arguments):
    """Measure ours at several chunk sizes and return the table rows."""
    rows = []
    for device in devices:
        for shape in SHAPES:
            for loss in SWEEP_DIVERGENCES:
                for chunk_size in SWEEP_CHUNK_SIZES:
                    ours = measure_in_child(
                        "ours", loss, shape, device, chunk_size, arguments
                    )
                    row = (
                        f"| {loss} | {format_shape(shape)} | {device} | {chunk_size} "
                        f"| {ours['extra_mib']:.0f} | {ours['seconds']:.2f} |"
                    )
                    print(row, flush=True)
                    rows.append(row)
    return rows


def cpu_model():
    """Return the CPU model name from /proc/cpuinfo, or the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(devices, threads):
    parts = [
        f"{os.cpu_count()} CPU cores ({cpu_model()})",
        f"torch threads per case: {threads}",
        f"torch {torch.__version__}",
    ]
    if "cuda" in devices:
        parts.append(torch.cuda.get_device_name())
    return ", ".join(parts)


def render_section(comparison_rows, sweep_rows, devices, arguments):
    command = shlex.join(["python", "benchmarks/bench_kd_loss.py", *sys.argv[1:]])
    threads = arguments.threads or torch.get_num_threads()
    lines = [
        SECTION_HEADING,
        "",
        f"Command: `{command}`. Machine: {machine_description(devices, threads)}. "
        f"Date: {datetime.date.today().isoformat()}.",
        "",
        "Forward and backward of the loss on fp32 logits with temperature "
        f"{TEMPERATURE}, the first 32 targets of each row set to -100, "
        f"`chunk_size={arguments.chunk_size}`. Extra MiB is the peak above the two "
        "logits tensors and the student-logits gradient. On CPU it is read from the "
        "resident set size high-water mark of a fresh process per case, so it "
        "includes allocator overhead, and repeated runs of kd_loss differed by up to "
        f"about 50 MiB. Time is the best of {arguments.repeats} runs "
        "after the measured one. Ratios are ours / naive. The naive loss is the "
        "reference of tests/test_losses.py: it tempers, log-softmaxes and combines "
        "whole fp32 (B, T, V) tensors and keeps them for autograd.",
        "",
        "When other processes use the same cores, more than one torch thread per "
        "case stalls at the OpenMP barrier of every operation. kd_loss runs about 20 "
        "operations per chunk, so its times suffer far more than those of the naive "
        "loss, which runs a few large ones. `--threads 1` avoids that.",
        "",
        "| divergence | B x T x V | device | naive extra MiB | ours extra MiB "
        "| ratio | naive s | ours s | ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *comparison_rows,
    ]
    if sweep_rows:
        lines += [
            "",
            "Chunk-size sweep of `kd_loss` (the numbers behind `DEFAULT_CHUNK_SIZE`):",
            "",
            "| divergence | B x T x V | device | chunk_size | extra MiB | s |",
            "| --- | --- | --- | ---: | ---: | ---: |",
            *sweep_rows,
        ]
    return "\n".join(lines) + "\n"


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="supervised positions per chunk of kd_loss (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per case after the memory run (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in each case's process, set through OMP_NUM_THREADS "
        "(default: torch's default)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"also time kd_loss at chunk sizes {SWEEP_CHUNK_SIZES}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "docs" / "benchmarks.md",
        help="Markdown file whose KD loss section is replaced (default: %(default)s)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the tables only"
    )
    return parser.parse_args()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        implementation, loss, shape, device, chunk_size, repeats = sys.argv[2:8]
        shape = tuple(int(size) for size in shape.split(","))
        result = run_case(
            implementation, loss, shape, device, int(chunk_size), int(repeats)
        )
        print(json.dumps(result))
        return

    arguments = parse_arguments()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    comparison_rows = compare_divergences(devices, arguments)
    sweep_rows = []
    if arguments.sweep:
        sweep_rows = sweep_chunk_sizes(devices, arguments)

    section = render_section(comparison_rows, sweep_rows, devices, arguments)
    print(section)
    if not arguments.no_write:
        write_section(arguments.output, SECTION_HEADING, section)


if __name__ == "__main__":
    main()

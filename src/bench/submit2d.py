"""The 2D submission's throughput at Carvana's real size: synthetic Carvana test images of 1918x1280, a
unet trained for one epoch at a reduced input size (the model runs at the training size, its
probabilities are resized back to 1918x1280), submitted with `src.submit` as the competition's CSV.

Printed: images/s of the whole submission (src.submit, models loaded once per repeat), and per image
the JPEG decoding, the model (input, forward, sigmoid), the resize back to full size, the threshold,
the RLE encoding and the CSV writing (write_carvana_csv on ready masks, less the RLE and its one reading
of sample_submission.csv, shown apart: a cost per submission, not per image). Times are
medians over `--repeats`; the steps are timed on the submission's own functions, one image at a time.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import torch

from src.bench.metric import median_seconds
from src.core.device import select_device
from src.core.errors import DataError, run_cli
from src.data.folds import make_folds
from src.data.formats.carvana import FORMAT, encode_mask, read_img_csv
from src.data.formats.submission import write_carvana_csv
from src.data.image_samples import ImageInput, label_map
from src.data.synthetic import parse_size
from src.data.synthetic2d import generate_dataset
from src.engine.config import Seg2DConfig
from src.engine.run import train
from src.ensembling.submission import SubmitOptions, submit
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun


def prepare_work(work: Path, images: int, size: tuple[int, int], arch: str, img_size: int, device: str) -> Path:
    """The synthetic dataset (2 train cars, 1 test car of `images` views) and a run trained one epoch on fold 0."""
    generate_dataset("carvana", work / "car", cars=2, test_cars=1, views=images, size=size)
    make_folds(work / "car", n_folds=2, seed=0).to_csv(work / "folds.csv", index=False)
    train(Seg2DConfig(data_dir=str(work / "car"), cache_dir=str(work / "cache"), folds_csv=str(work / "folds.csv"),
                      out=str(work / "runs"), name="bench", arch=arch, img_size=img_size, batch_size=4, epochs=1,
                      workers=0, device=device))
    return work / "runs" / "bench"


def measure(work: Path, run_path: Path, repeats: int, device_name: str) -> dict[str, float]:
    """Seconds per image of each step, and of the whole submission."""
    data = work / "car"
    description, samples = FORMAT.describe(data), FORMAT.samples(data, "test").samples
    device = select_device(device_name)
    run = TrainedRun.load(run_path)
    predictor = RunPredictor(run, None, "test", (), device, cache_dir=run.cache_dir())
    task = predictor.folds[0].task
    n = len(samples)

    def per_image(step: Callable[[int], object]) -> float:
        return median_seconds(lambda: [step(i) for i in range(n)], repeats) / n

    images = [ImageInput.of(s.id, FORMAT.read_image(s, description)) for s in samples]
    probs = [predictor.predict(image) for image in images]
    masks = [label_map(p, task.cfg.threshold) for p in probs]
    _, height, width = images[0].shape
    small = torch.rand(1, description.n_classes, task.geometry.size, task.geometry.size, device=device)
    rows = [(s.images[0].name, m) for s, m in zip(samples, masks)]
    sample_csv = data / "sample_submission.csv"
    times = {
        "read": per_image(lambda i: FORMAT.read_image(samples[i], description)),
        "predict": per_image(lambda i: predictor.predict(images[i])),
        "resize": per_image(lambda i: task.geometry.from_model(small, height, width).cpu().numpy()),
        "threshold": per_image(lambda i: label_map(probs[i], task.cfg.threshold)),
        "rle": per_image(lambda i: encode_mask(masks[i])),
        "sample": median_seconds(lambda: read_img_csv(sample_csv), repeats),  # once per submission, not per image
        "rle_csv": median_seconds(lambda: write_carvana_csv(work / "rows.csv", rows, sample_csv), repeats),
        "submit": median_seconds(lambda: submit(SubmitOptions(data_dir=data, runs=(run_path,), out=work / "sub.csv",
                                                       device=device_name)), repeats) / n,
    }
    times["model"] = times["predict"] - times["resize"]
    times["rle_csv"] = (times["rle_csv"] - times["sample"]) / n
    times["csv"] = times["rle_csv"] - times["rle"]
    return times


def table(times: dict[str, float], n: int, size: tuple[int, int], arch: str, img_size: int, device: str) -> str:
    whole = times["submit"]
    lines = [f"{n} test images of {size[0]}x{size[1]}, {arch} at {img_size} px, device {device}; "
             f"src.submit: {1 / whole:.2f} images/s ({whole * 1e3:.0f} ms/image)",
             f"{'step':<34}{'ms/image':>10}{'share':>8}"]
    for key, name in (("read", "read (JPEG decode)"), ("model", "model (input, forward, sigmoid)"),
                      ("resize", f"resize back to {size[0]}x{size[1]}"), ("threshold", "threshold (label_map)"),
                      ("rle", "RLE encoding"), ("csv", "CSV writing"), ("rle_csv", "RLE + CSV")):
        lines.append(f"{name:<34}{times[key] * 1e3:>10.1f}{times[key] / whole:>8.1%}")
    lines.append(f"(reading sample_submission.csv, once per submission: {times['sample'] * 1e3:.1f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.submit2d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="test images (views of one car)")
    parser.add_argument("--size", type=parse_size, default=(1918, 1280), help="image size WxH (Carvana's: 1918x1280)")
    parser.add_argument("--arch", default="unet_tiny")
    parser.add_argument("--img-size", type=int, default=256, help="the model's input size")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.images < 1:
        raise DataError("need --repeats >= 1 and --images >= 1")
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        run = prepare_work(work, args.images, args.size, args.arch, args.img_size, args.device)
        times = measure(work, run, args.repeats, args.device)
    print(table(times, args.images, args.size, args.arch, args.img_size, args.device))
    return 0


if __name__ == "__main__":
    run_cli(main)

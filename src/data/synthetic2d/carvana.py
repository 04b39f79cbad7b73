"""Synthetic cars in the Kaggle Carvana layout.

train/<car>_<NN>.jpg with train_masks/<car>_<NN>_mask.gif (palette GIF, car = 1) and train_masks.csv
(img, rle_mask: row-major runs), test/ of other cars with sample_submission.csv, metadata.csv of every
car, and the test truth beside the folder. A car is a body, cabin, window and wheels of one saturated
colour, turned on a turntable: view NN of 16 is seen from angle (NN - 1) * 22.5 degrees, foreshortened,
mirrored when it faces away, slightly tilted and offset; a studio gradient with a floor shadow behind it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from src.core.atomic import atomic_dir, atomic_path
from src.core.errors import DataError
from src.core.outputs import TRUTH_ENDINGS, new_dataset_paths
from src.data import rle
from src.data.synthetic.writer import write_csv
from src.data.synthetic2d.common import Summary2D, check_counts, check_size, save_image, save_index_gif
from src.data.synthetic2d.shapes import fill, finish, hsv, place, region, rng_for, smooth_noise, superellipse, vertical_gradient

REAL_SIZE = (1918, 1280)
COLUMNS = ["img", "rle_mask"]
PLACEHOLDER_RLE = "1 1"  # what the real sample_submission.csv holds for every image
MAKES = ("Acura", "BMW", "Chevrolet", "Ford", "Honda", "Nissan", "Toyota", "Volkswagen")
TRIMS = ("Base", "LX", "EX", "S", "SE", "Sport", "Touring")
_IDS, _CAR, _VIEW, _META = 0, 1, 2, 3  # generator streams
_WHEEL, _HUB, _WINDOW = (34, 34, 38), (120, 120, 126), (52, 62, 78)


@dataclass(frozen=True)
class Car:
    """One car's look, the same in all its views; lengths in units of the half-length."""

    colour: np.ndarray
    half_length: float  # fraction of the image's width (of 1.5 x its height, if less: the real aspect ratio)
    body: np.ndarray
    cabin: np.ndarray
    window: np.ndarray
    wheels: tuple[np.ndarray, np.ndarray]
    hubs: tuple[np.ndarray, np.ndarray]
    bottom: float  # lowest point (the wheels' bottom)


def make_car(seed: int, index: int) -> Car:
    """Car `index`: its hue steps by the golden ratio, so any two cars of a dataset differ in colour."""
    rng = rng_for(seed, _CAR, index)
    hue = rng_for(seed, _CAR).random() + 0.618034 * index
    h = rng.uniform(0.24, 0.32)
    cabin_b, cabin_x = rng.uniform(0.9, 1.25) * h, rng.uniform(-0.12, 0.08)
    cabin_a, wheel_r, wheel_x = rng.uniform(0.5, 0.65), rng.uniform(0.19, 0.24), rng.uniform(0.56, 0.66)
    wheel_y = 0.8 * h
    cabin_center = (cabin_x, -0.5 * h)
    wheels = tuple(place(superellipse((wheel_r, wheel_r), n=32), (x, wheel_y)) for x in (-wheel_x, wheel_x))
    hubs = tuple(place(superellipse((0.45 * wheel_r, 0.45 * wheel_r), n=24), (x, wheel_y)) for x in (-wheel_x, wheel_x))
    return Car(colour=hsv(hue, rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.8)), half_length=rng.uniform(0.3, 0.36),
               body=superellipse((1.0, h), rng.uniform(2.5, 4.0)),
               cabin=place(superellipse((cabin_a, cabin_b)), cabin_center),
               window=place(superellipse((0.75 * cabin_a, 0.45 * cabin_b)), (cabin_x, -0.5 * h - 0.35 * cabin_b)),
               wheels=wheels, hubs=hubs, bottom=wheel_y + wheel_r)


def render_view(car: Car, seed: int, index: int, view: int, views: int, size: tuple[int, int]):
    """(H, W, 3) uint8 image and (H, W) uint8 0/1 mask of one view of a car."""
    width, height = size
    rng = rng_for(seed, _VIEW, index, view)
    turn = 2 * np.pi * view / views
    unit = car.half_length * min(width, height * REAL_SIZE[0] / REAL_SIZE[1])
    facing = 1.0 if np.cos(turn) >= 0 else -1.0
    scale = (facing * unit * (0.45 + 0.55 * abs(np.cos(turn))), unit)
    center = (width * (0.5 + 0.03 * np.sin(2 * turn)), height * (0.55 + 0.02 * np.cos(turn)))
    tilt = 3.0 * np.sin(turn)

    def at(points):
        return place(points, center, tilt, scale)

    image = vertical_gradient((height, width), (236, 236, 238), (182, 182, 186))
    image *= 1 + 0.012 * smooth_noise(rng, (height, width), 16)[..., None]
    shadow = fill(np.zeros((height, width), np.float32), at(superellipse((1.15, 0.12)) + (0, car.bottom)), 1.0)
    image *= 1 - 0.35 * cv2.GaussianBlur(shadow, (0, 0), max(1.0, unit * 0.06))[..., None]
    shade = np.linspace(1.12, 0.85, height, dtype=np.float32)[:, None]  # light from above
    mask = np.zeros((height, width), np.uint8)
    for part, colour in ((car.body, car.colour), (car.cabin, car.colour), (car.window, _WINDOW),
                         *((w, _WHEEL) for w in car.wheels), *((w, _HUB) for w in car.hubs)):
        inside = region(mask.shape, at(part))
        image[inside] = np.asarray(colour, np.float32) * shade[inside.nonzero()[0]]
        mask |= inside
    return finish(image, rng, 3.0), mask


def car_ids(seed: int, n: int) -> list[str]:
    """`n` distinct ids of 12 hex digits, as the real cars have."""
    rng, ids = rng_for(seed, _IDS), []
    while len(ids) < n:
        car = rng.bytes(6).hex()
        if car not in ids:
            ids.append(car)
    return ids


def metadata_row(seed: int, index: int, car: str) -> tuple:
    """(id, year, make, model, trim1, trim2) of one car."""
    rng = rng_for(seed, _META, index)
    make, year = MAKES[rng.integers(len(MAKES))], int(rng.integers(2005, 2018))
    model, trim1 = f"{make[:3].upper()}-{rng.integers(1, 9)}", TRIMS[rng.integers(len(TRIMS))]
    return car, year, make, model, trim1, ("", "w/Tech", "AWD")[rng.integers(3)]


def write_car(root: Path, split: str, seed: int, index: int, car: str, views: int, size: tuple[int, int]) -> list[tuple]:
    """Write one car's views under root/split (and their masks for train); its (img, rle_mask) rows."""
    look, rows = make_car(seed, index), []
    for view in range(views):
        name = f"{car}_{view + 1:02d}"
        image, mask = render_view(look, seed, index, view, views, size)
        save_image(root / split / f"{name}.jpg", image, quality=90)
        if split == "train":
            save_index_gif(root / "train_masks" / f"{name}_mask.gif", mask)
        rows.append((f"{name}.jpg", rle.encode(mask)))
    return rows


def generate(out_dir: str | Path, cars: int = 6, test_cars: int = 2, views: int = 16, seed: int = 0,
             size: tuple[int, int] = (240, 160), truth_out: str | Path | None = None, overwrite: bool = False) -> Summary2D:
    """Write a synthetic Carvana dataset under `out_dir` (atomically) and its test truth CSV (img, rle_mask),
    by default `<out_dir>_test_truth.csv`. `size` is (W, H); the real one is 1918x1280."""
    check_counts(cars=(cars, 1), test_cars=(test_cars, 0), views=(views, 1), seed=(seed, 0))
    if views > 99:
        raise DataError(f"--views {views}: at most 99 (two-digit view numbers)")
    size = check_size(size)
    out, truth = new_dataset_paths(out_dir, truth_out, TRUTH_ENDINGS["carvana"], overwrite)
    ids = car_ids(seed, cars + test_cars)
    with atomic_dir(out) as tmp:
        (tmp / "test").mkdir()
        rows = [write_car(tmp, "train" if i < cars else "test", seed, i, car, views, size) for i, car in enumerate(ids)]
        train, test = sorted(r for rs in rows[:cars] for r in rs), sorted(r for rs in rows[cars:] for r in rs)
        write_csv(tmp / "train_masks.csv", train, COLUMNS)
        write_csv(tmp / "sample_submission.csv", [(img, PLACEHOLDER_RLE) for img, _ in test], COLUMNS)
        write_csv(tmp / "metadata.csv", sorted(metadata_row(seed, i, car) for i, car in enumerate(ids)),
                  ["id", "year", "make", "model", "trim1", "trim2"])
        if test:
            with atomic_path(truth, suffix=".csv") as tmp_truth:
                write_csv(tmp_truth, test, COLUMNS)
    return Summary2D("carvana", str(out), str(truth) if test else None, size, len(train), len(test), 0,
                     f"{cars} train cars, {test_cars} test cars, {views} views each")

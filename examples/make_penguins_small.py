"""Write examples/penguins_small.csv: a synthetic, penguin-like table for the README's example.

The numbers are drawn from per-species normal distributions loosely shaped like the Palmer
penguins measurements (no download, no real data); ``island`` and ``sex`` are text columns to
one-hot encode, ``species`` is the label. Run from the repository root:

    python examples/make_penguins_small.py
"""

from pathlib import Path

import numpy as np

# species: (islands and their odds, bill length, bill depth, flipper length, body mass)
SPECIES = {
    "Adelie": ({"Torgersen": 0.4, "Biscoe": 0.3, "Dream": 0.3}, 38.8, 18.3, 190, 3700),
    "Chinstrap": ({"Dream": 1.0}, 48.8, 18.4, 196, 3730),
    "Gentoo": ({"Biscoe": 1.0}, 47.5, 15.0, 217, 5080),
}
SPREAD = (2.8, 1.1, 6.5, 450)  # standard deviations of the four measurements
ROWS_PER_SPECIES = 100
PATH = Path(__file__).with_name("penguins_small.csv")


def main(path: Path = PATH) -> None:
    rng = np.random.default_rng(0)
    lines = ["species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex"]
    for species, (islands, *means) in SPECIES.items():
        for _ in range(ROWS_PER_SPECIES):
            island = rng.choice(list(islands), p=list(islands.values()))
            sex = rng.choice(["female", "male"])
            shift = 0.5 if sex == "male" else -0.5  # males are a little larger
            bill, depth, flipper, mass = (
                m + s * (rng.normal() + shift) for m, s in zip(means, SPREAD, strict=True)
            )
            lines.append(
                f"{species},{island},{bill:.1f},{depth:.1f},{flipper:.0f},{mass:.0f},{sex}"
            )
    order = [lines[0], *(lines[1:][i] for i in rng.permutation(len(lines) - 1))]
    path.write_text("\n".join(order) + "\n")


if __name__ == "__main__":
    main()

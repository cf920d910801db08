"""Draw the course map (chapters and what each depends on) for the website's intro page.

Run by the website build (``course book``): ``python book/figures/course_map.py OUT.png``.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHAPTERS = {
    "00": ("Foundations", 0, 3),
    "01": ("Text as data", 1, 4),
    "02": ("Recurrent networks", 1, 2),
    "03": ("LSTM and GRU", 2, 2),
    "04": ("Seq2seq + attention", 3, 2),
    "05": ("Self-attention", 4, 2),
    "06": ("The Transformer", 5, 2),
    "07": ("GPT", 6, 3),
    "08": ("BERT", 6, 1),
    "09": ("Fine-tuning", 7, 3.5),
    "10": ("RAG", 7, 1),
    "11": ("Alignment", 8, 3.5),
    "12": ("Prompting + agents", 8, 1.5),
}
DEPENDS = [
    ("00", "01"), ("00", "02"), ("02", "03"), ("03", "04"), ("04", "05"), ("05", "06"),
    ("06", "07"), ("06", "08"), ("01", "07"), ("01", "08"), ("07", "09"), ("08", "10"),
    ("07", "10"), ("09", "11"), ("10", "12"), ("07", "12"),
]


def draw(path: str) -> None:
    fig, ax = plt.subplots(figsize=(12, 4.2))
    for a, b in DEPENDS:
        (_, xa, ya), (_, xb, yb) = CHAPTERS[a], CHAPTERS[b]
        ax.annotate("", xy=(xb - 0.42, yb), xytext=(xa + 0.42, ya),
                    arrowprops=dict(arrowstyle="->", color="#888", lw=1.2))
    for number, (name, x, y) in CHAPTERS.items():
        ax.text(x, y, f"{number}\n{name}", ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc="#e8f0fe", ec="#3367d6"))
    ax.set_xlim(-0.6, 8.6)
    ax.set_ylim(0.3, 4.6)
    ax.axis("off")
    ax.set_title("Course map: an arrow means 'uses what the earlier chapter builds'")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    draw(sys.argv[1] if len(sys.argv) > 1 else "course_map.png")

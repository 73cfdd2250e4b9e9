"""Paired statistics of two classifiers evaluated on the same images, and the spread of a metric over seeds.

A difference is a claim only when its interval says so. For two variants A and B on the same n images, count
b = images A gets right and B wrong, c = the reverse; their accuracy difference is (b - c) / n.

- Confidence interval (95 %): a paired percentile bootstrap over the images, 10,000 resamples, seeded. A
  resample of n images with replacement changes the difference only through how many of them fall in each of
  the four cells of the 2 x 2 agreement table, so each resample is drawn as one multinomial of those cells:
  the same distribution as resampling images, at the cost of 10,000 draws. Chosen because it needs no normal
  approximation, keeps the pairing (the two accuracies are correlated through the images), and gives [0, 0]
  when the predictions agree on every image; the percentile interval of a difference of proportions with
  n = 10,000 and thousands of discordant pairs is close to the score intervals (Newcombe 1998).
- p-value: the exact McNemar test, two-sided: under "no difference" each of the m = b + c discordant images
  favours A with probability 1/2, so p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(m, 1/2); p = 1 for m = 0.
- One accuracy p on n images has the standard error sqrt(p (1 - p) / n): 0.45 points at 71 % on 10,000.
- Over seeds: mean, sample standard deviation and the 95 % Student-t interval of the mean.

quantlab.differences applies them to every comparison the pipeline makes.
"""

import math

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


def signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "\u2212")


def paired(a_right: np.ndarray, b_right: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """The difference of two classifiers' accuracies on the same images, from their per-image correctness, as
    metrics/differences.json records it: accuracy of A minus accuracy of B in percentage points, its 95 %
    interval, McNemar's p, and the discordant counts b and c (images only A, only B gets right)."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    if a_right.shape != b_right.shape or a_right.ndim != 1 or not len(a_right):
        raise ValueError("paired needs two equally long, non-empty vectors of per-image correctness")
    n = len(a_right)
    b, c = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    cells = np.random.default_rng(seed).multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=resamples)
    deltas = 100.0 * (cells[:, 0] - cells[:, 1]) / n
    low, high = np.quantile(deltas, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"delta": round(100.0 * (b - c) / n, 2), "ci_low": round(float(low), 2), "ci_high": round(float(high), 2),
            "p": mcnemar(b, c), "only_a_right": b, "only_b_right": c}


def accuracy(predictions, labels) -> float:
    """Percent of correct predictions (NumPy arrays or torch tensors), rounded to two decimals as in
    metrics/accuracy.json."""
    return round(100.0 * float((predictions == labels).sum()) / len(labels), 2)


def mcnemar(b: int, c: int) -> float:
    """The exact two-sided McNemar p-value of b against c discordant pairs."""
    m = b + c
    if m == 0:
        return 1.0
    term = total = 1  # C(m, 0); then C(m, k + 1) = C(m, k) (m - k) / (k + 1), exactly, in Python's integers
    for k in range(min(b, c)):
        term = term * (m - k) // (k + 1)
        total += term
    return min(1.0, 2 * (total / 2 ** m))


def standard_error(accuracy: float, n: int) -> float:
    """In percentage points, of an accuracy (in %) measured on n images."""
    p = accuracy / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def spread(values: list[float]) -> dict:
    """A metric over seeds: mean, sample standard deviation ("sd"), 95 % t-interval of the mean ("low",
    "high") and the number of seeds."""
    values = np.asarray(values, np.float64)
    n = len(values)
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile((1 + LEVEL) / 2, n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    return {"mean": round(mean, 3), "sd": round(sd, 3), "low": round(mean - half, 3), "high": round(mean + half, 3),
            "n": n}


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function: 1 - I_x(df/2, 1/2) / 2 for t > 0, x = df / (df + t^2)."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)
    return 1 - tail if t >= 0 else tail


def t_quantile(probability: float, df: int) -> float:
    """The t value with t_cdf(t, df) = probability, by bisection (|t| < 1e4 for df >= 1 and p <= 0.9999)."""
    low, high = -1e4, 1e4
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, by its continued fraction (Numerical Recipes,
    betacf, with Lentz's method), on the side of x where it converges fast."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1 - regularized_beta(1 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * fraction / a


"""Scoring models from banks, in ONNX, run where the data lives.

The contract a model must meet (checked at submission and again by every node that runs it):
one float input of shape [N, k], k = the number of catalogue features it names, in that order;
and either one float output of shape [N] or [N, 1], or a classifier's (label, probabilities)
pair with probabilities [N, 2], of which the probability of class 1 is the score. The score
leaves the node clamped to the model's declared bounds and rounded, with the top contributing
features as reason codes; feature values never leave.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from xinyi.errors import Refusal

MAX_MODEL_BYTES = 5 * 1024 * 1024
SCORE_DECIMALS = 3
_FLOAT_TYPES = {"tensor(float)", "tensor(double)"}


@dataclass
class LoadedModel:
    sha256: bytes
    features: tuple[str, ...]
    output_min: float
    output_max: float
    session: object  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    column: int | None  # the probabilities column, for classifiers
    dtype: type = np.float32

    def score(self, vector: list[float]) -> float:
        return self.scores([vector])[0]

    def scores(self, vectors: list[list[float]]) -> list[float]:
        x = np.asarray(vectors, dtype=self.dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        out = np.asarray(out, dtype=np.float64)
        values = out[:, self.column] if self.column is not None else out.reshape(len(vectors))
        return [self._bounded(float(v)) for v in values]

    def _bounded(self, value: float) -> float:
        if not math.isfinite(value):
            raise Refusal.invalid("model", "produced a value that is not a finite number")
        return round(min(max(value, self.output_min), self.output_max), SCORE_DECIMALS)


def sha256(onnx_bytes: bytes) -> bytes:
    return hashlib.sha256(onnx_bytes).digest()


def load(onnx_bytes: bytes, features: list[str], output_min: float, output_max: float, catalogue) -> LoadedModel:
    """Check a model against the contract and prepare it to run; Refusal naming what is wrong."""
    import onnx
    import onnxruntime as ort

    if len(onnx_bytes) > MAX_MODEL_BYTES:
        raise Refusal.invalid("onnx", f"is {len(onnx_bytes)} bytes; at most {MAX_MODEL_BYTES} are accepted", "TOO_LARGE")
    unknown = [f for f in features if f not in catalogue.features]
    if unknown or not features or len(set(features)) != len(features):
        raise Refusal.invalid("model.features", f"may only name catalogue features, each once; not {unknown or 'these'}",
                              "NOT_IN_CATALOGUE")
    if not (math.isfinite(output_min) and math.isfinite(output_max) and output_min < output_max):
        raise Refusal.invalid("model.output_min", "the declared score bounds must be finite with min < max")
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any parser or runtime complaint means a malformed model
        raise Refusal.invalid("onnx", f"is not a valid ONNX model: {str(e).splitlines()[0][:200]}", "MALFORMED_MODEL") from None
    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    width = shape[1] if len(shape) == 2 else None
    if len(inputs) != 1 or inputs[0].type not in _FLOAT_TYPES or len(shape) != 2 or (isinstance(width, int) and width != len(features)):
        raise Refusal.invalid("onnx", f"must take one float input of shape [N, {len(features)}] (its features)",
                              "BAD_MODEL_INPUT")
    output_name, column = _score_output(session.get_outputs())
    dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
    model = LoadedModel(sha256(onnx_bytes), tuple(features), output_min, output_max, session, inputs[0].name,
                        output_name, column, dtype)
    model.scores([[f.baseline for f in (catalogue.features[n] for n in features)]])  # it must actually run
    return model


def _score_output(outputs) -> tuple[str, int | None]:
    floats = [o for o in outputs if o.type in _FLOAT_TYPES]
    if len(outputs) == 1 and floats:
        shape = floats[0].shape
        if len(shape) == 1 or (len(shape) == 2 and not (isinstance(shape[1], int) and shape[1] != 1)):
            return floats[0].name, None
    probs = [o for o in floats if o.name == "probabilities" and len(o.shape) == 2 and o.shape[1] == 2]
    if len(outputs) == 2 and probs:
        return probs[0].name, 1
    raise Refusal.invalid("onnx", "must output one bounded scalar per row (a float [N] or [N,1], or a binary "
                          "classifier's probabilities [N,2]); this model outputs "
                          + ", ".join(f"{o.name} {o.type} {o.shape}" for o in outputs), "BAD_MODEL_OUTPUT")


def reason_codes(model: LoadedModel, features: dict[str, float], catalogue, top: int = 3) -> list[tuple[str, str]]:
    """The features that move the score most from their baselines: (name, "raises"/"lowers")."""
    vector = [features.get(n, catalogue.features[n].baseline) for n in model.features]
    variants = []
    for i, name in enumerate(model.features):
        v = list(vector)
        v[i] = catalogue.features[name].baseline
        variants.append(v)
    base, *others = model.scores([vector, *variants])
    effects = [(abs(base - o), base - o, name) for o, name in zip(others, model.features) if base != o]
    effects.sort(reverse=True)
    return [(name, "raises" if delta > 0 else "lowers") for _, delta, name in effects[:top]]

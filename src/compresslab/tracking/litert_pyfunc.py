"""One .tflite classifier as an MLflow pyfunc model, run with LiteRT: what `--register` logs, so that

    model = mlflow.pyfunc.load_model("models:/firenet@champion")
    model.predict(images)          # float32 (N, H, W, C) in [0, 1], as `prepare` scales them
    mlflow models serve -m models:/firenet@champion --env-manager local

MLflow logs this file as the model's code ("models from code") and executes it wherever the model is loaded,
so it imports only what serving needs (NumPy, pandas, LiteRT, MLflow): never TensorFlow, never compresslab.
That is also why the few lines that (de)quantize an int8 file's input and output are written here again
(compresslab.tflite.runtime does the same for `evaluate`; tests/test_serving.py checks both give the same
classes). The model config names the classes, the input size and `num_threads`; the file is the artifact
`tflite`. Bad input (another shape or dtype) is refused by the signature MLflow enforces before `predict`.
"""

import threading

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class LiteRTClassifier(PythonModel):
    """Class probabilities and the predicted class name of each image."""

    def load_context(self, context):
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415  (loaded with the model, not at import)

        config = context.model_config
        self.class_names = list(config["class_names"])
        self.interpreter = Interpreter(model_path=context.artifacts["tflite"],
                                       num_threads=int(config.get("num_threads", 1)))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.lock = threading.Lock()   # one interpreter: the scoring server may call predict from several threads

    def predict(self, context, model_input, params=None):
        images = np.asarray(model_input, dtype=np.float32)
        with self.lock:
            scores = np.stack([self._invoke(image) for image in images]) if len(images) else np.zeros(
                (0, len(self.class_names)), np.float32)
        best = scores.argmax(axis=1) if len(scores) else np.zeros(0, int)
        return pd.DataFrame({"class": [self.class_names[k] for k in best], "class_index": best.astype(int),
                             "probabilities": [row.tolist() for row in scores]})

    def _invoke(self, image: np.ndarray) -> np.ndarray:
        """One image's scores (the file's batch is 1), its input quantized and its output dequantized as the
        tensors' scale and zero point say."""
        self.interpreter.set_tensor(self.input["index"], _quantize(image[None], self.input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)[0]


def _quantize(x: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, details: dict) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


set_model(LiteRTClassifier())

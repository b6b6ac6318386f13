"""One .tflite file as an MLflow pyfunc model, run with LiteRT: the model the report logs for every file and
`--register` registers, so that

    model = mlflow.pyfunc.load_model("models:/firenet@champion")
    model.predict(images)          # float32 (N, H, W, C) in [0, 1], as `prepare` scales them
    mlflow models serve -m models:/firenet@champion --env-manager local

MLflow logs this file as the model's code ("models from code") and executes it wherever the model is loaded,
so it imports only what serving needs (NumPy, pandas, LiteRT, MLflow): never TensorFlow, never compresslab.
That is also why the few lines that (de)quantize an int8 file's input and output are written here again
(compresslab.tflite.runtime does the same for `evaluate`; the registry test checks both give the same answers).
A detector's model ships compresslab's `detection` package folder as its code (`boxes` and `postprocess` are
NumPy only) and decodes with the anchors and NMS settings its file was evaluated with.

model_config: task, class_names, num_threads; a detector's decoding settings and which output is which.
Artifacts: `tflite` (the file), `anchors` (a detector's, .npy). Bad input (another shape or dtype) is refused by
the signature MLflow enforces before `predict`.
"""

import threading

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class LiteRTModel(PythonModel):
    """A classifier answers each image with its class and probabilities, a detector with its boxes."""

    def load_context(self, context):
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415  (loaded with the model, not at import)

        config = context.model_config
        self.class_names = list(config["class_names"])
        self.interpreter = Interpreter(model_path=context.artifacts["tflite"],
                                       num_threads=int(config.get("num_threads", 1)))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        by_index = {detail["index"]: detail for detail in self.interpreter.get_output_details()}
        self.decoder = None
        if config.get("task") == "detection":
            from detection.postprocess import Decoder  # noqa: PLC0415  (the model's code folder, on sys.path)

            self.decoder = Decoder(np.load(context.artifacts["anchors"]), **config["decoding"])
            self.outputs = [by_index[int(config["boxes_output"])], by_index[int(config["scores_output"])]]
        else:
            self.outputs = list(by_index.values())[:1]
        self.lock = threading.Lock()   # one interpreter: the scoring server may call predict from several threads

    def predict(self, context, model_input, params=None):
        images = np.asarray(model_input, dtype=np.float32)
        with self.lock:
            answers = [self._invoke(image) for image in images]
        if self.decoder is not None:
            return pd.DataFrame([self._detections(*outputs) for outputs in answers],
                                columns=["boxes", "scores", "classes", "class_index"])
        scores = np.stack([outputs[0] for outputs in answers]) if answers else np.zeros((0, len(self.class_names)))
        best = scores.argmax(axis=1).astype(int)
        return pd.DataFrame({"class": [self.class_names[k] for k in best], "class_index": best,
                             "probabilities": [row.tolist() for row in scores]})

    def _invoke(self, image: np.ndarray) -> list[np.ndarray]:
        """One image's outputs (the file's batch is 1), its input quantized and its outputs dequantized as the
        tensors' scale and zero point say."""
        self.interpreter.set_tensor(self.input["index"], _quantize(image[None], self.input))
        self.interpreter.invoke()
        return [_dequantize(self.interpreter.get_tensor(out["index"]), out)[0] for out in self.outputs]

    def _detections(self, raw_boxes: np.ndarray, scores: np.ndarray) -> dict:
        found = self.decoder.detect(raw_boxes[None], scores[None])[0]
        return {"boxes": found.boxes.tolist(), "scores": found.scores.tolist(),   # [ymin, xmin, ymax, xmax]
                "classes": [self.class_names[k] for k in found.classes], "class_index": found.classes.tolist()}


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


set_model(LiteRTModel())

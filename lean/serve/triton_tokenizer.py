"""Triton Inference Server Python-backend model: texts in, the ONNX classifier's int64 inputs out.

lean serve's Triton repository writer copies this file as `<name>_tokenizer/1/model.py`, beside the
exported tokenizer.json and a small tokenizer_settings.json. It needs only `tokenizers` and numpy in
Triton's Python environment (`pip install tokenizers` in the container), never torch.

Every text is padded to max_length, so requests from different clients have the same shape and
Triton's dynamic batcher can put them in one onnxruntime call of the model that follows.
"""

import json
import os

import numpy as np


def encode(tokenizer, texts, max_length, pad_id, names):
    """(B, max_length) int64 arrays, right-padded, truncated to max_length (special tokens counted)."""
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.full((len(texts), max_length), pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), max_length), dtype=np.int64)
    types = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feed[name] for name in names}


def _text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        here = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
        with open(os.path.join(here, "tokenizer_settings.json")) as f:
            settings = json.load(f)
        self.max_length, self.pad_id, self.names = settings["max_length"], settings["pad_id"], settings["outputs"]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)  # (B, 1) bytes
                feed = encode(self.tokenizer, [_text(t) for t in texts], self.max_length, self.pad_id, self.names)
                outputs = [pb_utils.Tensor(name, feed[name]) for name in self.names]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as e:  # this request fails alone; the others in the batch are answered
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses

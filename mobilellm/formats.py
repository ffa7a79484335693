"""The names of the export formats, in one place for the exporters, the command line and the bench
(importing this module imports nothing else)."""

QUANT_MODES = ("fp32", "int8", "8da4w")  # a .pte program's weights: float, W8A8, or int4 weights with int8 activations
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")  # a GGUF file's matrices; q8_0 and q4_0 quantize in blocks of 32

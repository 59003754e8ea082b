"""fmlp: functional MLPs in JAX, differentiated by hand-written VJPs, checked against jax.grad."""

from fmlp import config as config
from fmlp import data as data
from fmlp import engine as engine
from fmlp import errors as errors
from fmlp import gates as gates
from fmlp import info as info
from fmlp import nn as nn
from fmlp import run as run
from fmlp import testing as testing
from fmlp import train as train
from fmlp import viz as viz
from fmlp.engine import NonDifferentiableError as NonDifferentiableError
from fmlp.engine import grad as grad
from fmlp.engine import value_and_grad as value_and_grad
from fmlp.engine import vjp as vjp
from fmlp.run import fit as fit
from fmlp.run import load as load

__version__ = "0.1.0"

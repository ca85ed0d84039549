"""Exceptions raised for bad input, bad files and failed simulations."""


class InputError(ValueError):
    """Input data or arguments are inconsistent or implausible."""


class OutputExistsError(FileExistsError):
    """An output path already holds results and overwriting was not requested."""


class ModelFileError(ValueError):
    """A file is not a loadable openmm-cg model, or does not fit the system it is used for."""


class SimulationBlowUpError(RuntimeError):
    """A simulation produced NaN or exploding energies; the last good state was saved."""

    def __init__(self, message: str, step: int, last_good_state_path: str):
        super().__init__(message)
        self.step = step
        self.last_good_state_path = last_good_state_path


class RolloutStopped(RuntimeError):
    """A learned dynamics step produced an unphysical frame (collision, blow-up); the last good state is kept."""

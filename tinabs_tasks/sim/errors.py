"""XAPI failures as the simulator raises them: a code plus string parameters."""


class XapiError(Exception):
    """A XAPI `Failure`: travels as ``ErrorDescription = [code, *params]``."""

    def __init__(self, code: str, *params):
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]

    def __str__(self) -> str:
        return " ".join(self.description)


def handle_invalid(cls: str, ref: str) -> XapiError:
    return XapiError("HANDLE_INVALID", cls, ref)


def bad_power_state(vm: str, expected: list[str], actual: str) -> XapiError:
    # xapi_vm_lifecycle.ml report_power_state_error: lowercase, ", " joined.
    return XapiError("VM_BAD_POWER_STATE", vm, ", ".join(s.lower() for s in expected), actual.lower())

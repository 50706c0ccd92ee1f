"""Errors that are the user's to fix: reported as one line, never as a traceback."""


class UserError(Exception):
    """A bad config value, a missing dataset, a run folder that is not one: say what and how to fix it."""


class ConfigError(UserError):
    def __init__(self, key: str, value: object, allowed: str):
        super().__init__(f"invalid config: {key}={value!r}; allowed: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed

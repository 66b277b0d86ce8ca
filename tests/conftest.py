pytest_plugins = ["tidings.testing.plugin"]

"""User-facing errors (the CLI prints them as one line and exits with status 2), and the install
line such errors give for the FFCV extra (read by the loaders and by `fasthpt prep`)."""


class UserError(Exception):
    """Bad input from the user (a path, a flag, a config key): one clear line, exit code 2."""


# FFCV is an extra (pyproject.toml): pip builds it from source against these Debian packages
# (ffcv's setup.py: pkg-config --cflags --libs opencv4, then libturbojpeg).
FFCV_INSTALL = ("pip install 'fasthpt[ffcv]' after the Debian packages pkg-config libopencv-dev "
                "libturbojpeg0-dev (`make setup` installs both)")

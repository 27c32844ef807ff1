"""The errors rnnlab raises for bad input; stages print them without a traceback."""


class RnnlabError(Exception):
    """Bad input or a failed precondition, with a message that names the file and the fix."""


class DownloadError(RnnlabError):
    """A download that failed for good (after retries where retrying made sense)."""


class ChecksumError(DownloadError):
    """Downloaded or extracted bytes whose md5 differs from the expected one."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would land outside the target directory, or a link/device."""


class DataFormatError(RnnlabError):
    """A data file that does not have the expected schema or values."""

"""safetensors checkpoints through mcsafe: a drop-in for ``safetensors.safe_open`` and
``load_file``, and Hugging Face sharded checkpoints (``*.safetensors.index.json``).

    from mcsafe.formats.safetensors import safe_open      # was: from safetensors import ...

Headers are checked as the safetensors package (0.8) checks them; tensors are copied
out of the file by the table-driven copy, so a bad page or a file cut under the
reader raises MemoryFaultError naming the tensor, the element and the file offset,
and the other tensors still load. The safetensors package itself maps the file and
reads it with plain loads: the SIGBUS this avoids. Deliberate differences from it
are listed in docs/CHECKPOINTS.md.
"""

from ._dtypes import DTYPES
from ._header import SafetensorsError
from ._open import SafeSlice, TensorNotFound, load_file, safe_open
from ._sharded import ShardedCheckpoint, load_sharded, open_sharded

#: The reference's spelling of the error's name.
SafetensorError = SafetensorsError

__all__ = ["DTYPES", "SafeSlice", "SafetensorError", "SafetensorsError", "ShardedCheckpoint",
           "TensorNotFound", "load_file", "load_sharded", "open_sharded", "safe_open"]

"""``runcache.Memory``: a drop-in for ``joblib.Memory`` backed by a runcache store.

>>> import runcache as rc
>>> memory = rc.Memory("./cache", verbose=0)
>>> @memory.cache(ignore=["verbose"])
... def fit(X, alpha, verbose=False): ...
>>> fit(X, 0.1)                           # computes once, then loads
>>> Pipeline(steps, memory=memory)        # scikit-learn reuses fitted transformers

The store lives in ``location/runcache`` (as joblib's lives in ``location/joblib``), so any
directory works; a ``location`` that already is a runcache store, or a store URL, is used as
is. Failures are never cached, as in joblib. What differs on purpose (docs/joblib.md):

- The key is runcache's canonical content key. Arguments runcache cannot hash by value get a
  key from what defines them, never from a pickle: scikit-learn estimators (anything with
  ``get_params``) by class + parameters + fitted attributes (names ending in ``_``), numpy
  random generators by their state, functions and classes by qualified name. Anything else
  unhashable is a ``TypeError`` naming the argument (give the class ``__runcache_key__``).
- A change of the function's source changes the key (runcache's ``track_code``): the old
  entries are not wiped, ``reduce_size`` evicts them when space is needed.
- Exactly one process computes a missing entry; the others wait and load it.
"""

from runcache._memory.funcs import CollisionWarning, MemorizedFunc, NotMemorizedFunc
from runcache._memory.memory import STORE_DIR, Memory
from runcache._memory.results import MemorizedResult, NotMemorizedResult


__all__ = [
    "CollisionWarning",
    "Memory",
    "MemorizedFunc",
    "MemorizedResult",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "STORE_DIR",
]

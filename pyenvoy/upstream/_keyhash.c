/*
 * pyenvoy.upstream._keyhash: a key's hash and its consistent-hash table entry
 * in one call, for the per-command routing of redis_proxy.
 *
 * The hash is the 64-bit MurmurHash2 of libstdc++'s std::_Hash_bytes (the
 * MurmurHash64A scheme), which Envoy's MurmurHash::murmurHash2 copies; the
 * ring search is a lower bound with wrap-around, as Envoy's ring lookup.
 * pyenvoy.upstream.key_lookup has the same functions in Python and uses them
 * when this extension was not built; the tests run both on the same cases.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define STD_HASH_SEED 0xc70f6907ULL

static const uint64_t MUL = 0xc6a4a7935bd1e995ULL;

static inline uint64_t shift_mix(uint64_t v)
{
    return v ^ (v >> 47);
}

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t murmur2(const unsigned char *p, size_t len, uint64_t seed)
{
    uint64_t hash = seed ^ (len * MUL);
    const unsigned char *end = p + (len & ~(size_t)7);
    for (; p != end; p += 8) {
        hash ^= shift_mix(load_le64(p) * MUL) * MUL;
        hash *= MUL;
    }
    size_t rest = len & 7;
    if (rest) {
        uint64_t tail = 0;
        for (size_t i = rest; i > 0; i--)
            tail = (tail << 8) | p[i - 1];
        hash ^= tail;
        hash *= MUL;
    }
    hash = shift_mix(hash) * MUL;
    return shift_mix(hash);
}

/* The bytes a key is hashed by: with hashtagging, what is between its first
 * '{' and the first '}' after it, when that is not empty. */
static void hashed_part(const unsigned char **p, Py_ssize_t *len)
{
    const unsigned char *open = memchr(*p, '{', (size_t)*len);
    if (open == NULL)
        return;
    const unsigned char *after = open + 1;
    const unsigned char *close = memchr(after, '}', (size_t)(*len - (after - *p)));
    if (close == NULL || close == after)
        return;
    *p = after;
    *len = close - after;
}

static int key_hash(PyObject *key, PyObject *hashtagging, uint64_t *out)
{
    if (!PyBytes_CheckExact(key)) {
        PyErr_SetString(PyExc_TypeError, "the key must be bytes");
        return -1;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(key);
    Py_ssize_t len = PyBytes_GET_SIZE(key);
    int tagging = PyObject_IsTrue(hashtagging);
    if (tagging < 0)
        return -1;
    if (tagging)
        hashed_part(&p, &len);
    *out = murmur2(p, (size_t)len, STD_HASH_SEED);
    return 0;
}

static PyObject *entry_at(PyObject *entries, Py_ssize_t index)
{
    if (index >= PyList_GET_SIZE(entries)) {
        PyErr_SetString(PyExc_IndexError, "fewer entries than table slots");
        return NULL;
    }
    PyObject *entry = PyList_GET_ITEM(entries, index);
    Py_INCREF(entry);
    return entry;
}

PyDoc_STRVAR(murmurHash2_doc,
"murmurHash2(data, seed=0xc70f6907) -> int\n\n"
"The 64-bit MurmurHash2 of libstdc++'s std::_Hash_bytes of the bytes data.");

static PyObject *py_murmurHash2(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t seed = STD_HASH_SEED;
    if (nargs < 1 || nargs > 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "murmurHash2(data: bytes, seed: int = ...)");
        return NULL;
    }
    if (nargs == 2) {
        seed = PyLong_AsUnsignedLongLong(args[1]);
        if (seed == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
    }
    return PyLong_FromUnsignedLongLong(murmur2(
        (const unsigned char *)PyBytes_AS_STRING(args[0]),
        (size_t)PyBytes_GET_SIZE(args[0]), seed));
}

PyDoc_STRVAR(ringEntry_doc,
"ringEntry(hashes, entries, hashtagging, key) -> entries[i]\n\n"
"i is the first ring position whose hash is at least the key's (wrapping to\n"
"0): hashes holds the ring's sorted hashes as native uint64 (bytes), entries\n"
"one object per position.  None for an empty ring.");

static PyObject *py_ringEntry(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "ringEntry(hashes: bytes, entries: list, hashtagging, key: bytes)");
        return NULL;
    }
    uint64_t hash;
    if (key_hash(args[3], args[2], &hash) < 0)
        return NULL;
    const unsigned char *ring = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]) / 8, lo = 0, hi = n;
    if (n == 0)
        Py_RETURN_NONE;
    while (lo < hi) {
        Py_ssize_t mid = lo + ((hi - lo) >> 1);
        uint64_t value;
        memcpy(&value, ring + mid * 8, 8);
        if (value < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    return entry_at(args[1], lo == n ? 0 : lo);
}

PyDoc_STRVAR(tableEntry_doc,
"tableEntry(entries, hashtagging, key) -> entries[hash % len(entries)]\n\n"
"A Maglev table's entry for the key; None for an empty table.");

static PyObject *py_tableEntry(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "tableEntry(entries: list, hashtagging, key: bytes)");
        return NULL;
    }
    uint64_t hash;
    if (key_hash(args[2], args[1], &hash) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(args[0]);
    if (n == 0)
        Py_RETURN_NONE;
    return entry_at(args[0], (Py_ssize_t)(hash % (uint64_t)n));
}

static PyMethodDef keyhash_methods[] = {
    {"murmurHash2", (PyCFunction)(void (*)(void))py_murmurHash2, METH_FASTCALL,
     murmurHash2_doc},
    {"ringEntry", (PyCFunction)(void (*)(void))py_ringEntry, METH_FASTCALL, ringEntry_doc},
    {"tableEntry", (PyCFunction)(void (*)(void))py_tableEntry, METH_FASTCALL, tableEntry_doc},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef keyhash_module = {
    PyModuleDef_HEAD_INIT, "pyenvoy.upstream._keyhash",
    "A key's MurmurHash2 and its ring or Maglev entry, at C speed.", -1, keyhash_methods,
    NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__keyhash(void)
{
    return PyModule_Create(&keyhash_module);
}

/*
 * pyenvoy.filters.postgres_proxy._scan: postgres_proxy's scan of whole typed
 * messages, one call per chunk, and the filter's onData/onWrite around it.
 *
 * pyenvoy.filters.postgres_proxy.scan has the same functions and class in
 * Python (with their full contract); the filter uses those when this
 * extension was not built, and the tests run both on the same streams.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define ACT 255

/* Set once by configure(): the scan's limit on a chunk's size, its
 * "nothing to hand back" object, FilterStatus.CONTINUE. */
static Py_ssize_t scan_limit = 0;
static PyObject *missing_object = NULL;
static PyObject *continue_status = NULL;
/* Interned names. */
static PyObject *str_value, *str_aside, *str_sql, *str_newTag, *str_decodeFrontend,
    *str_decodeBackend, *str_rescan;
static PyObject *empty_bytes;

static inline uint32_t load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The header at pos, when its message is whole and its length passes the
 * rules: the message's end, else -1. */
static inline Py_ssize_t whole_message(const unsigned char *data, Py_ssize_t size,
                                       Py_ssize_t pos, const unsigned char *rules)
{
    uint32_t length = load_be32(data + pos + 1);
    if (length < 4 || (Py_ssize_t)length >= size - pos)
        return -1;
    unsigned char rule = rules[data[pos]];
    if (rule != ACT && rule != 0 && length != rule)
        return -1;
    return pos + (Py_ssize_t)length + 1;
}

/* The first NUL in [start, end), where the decoder ends a text: its
 * position, else -1. */
static inline Py_ssize_t text_end(const unsigned char *data, Py_ssize_t start, Py_ssize_t end)
{
    const unsigned char *nul = memchr(data + start, 0, (size_t)(end - start));
    return nul == NULL ? -1 : nul - data;
}

/* The outline of an ASCII text (every digit as '0'); NULL with no error set
 * when the text is not ASCII. */
static PyObject *outline_of(const unsigned char *text, Py_ssize_t len)
{
    PyObject *outline = PyBytes_FromStringAndSize(NULL, len);
    if (outline == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(outline);
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = text[i];
        if (c >= 0x80) {
            Py_DECREF(outline);
            return NULL;
        }
        out[i] = (unsigned char)(c - '0') <= 9 ? '0' : c;
    }
    return outline;
}

/* Whether written (a dict, or NULL) holds every (table, ops) of tables. */
static int all_written(PyObject *tables, PyObject *written)
{
    if (written == NULL || !PyTuple_CheckExact(tables))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tables); i++) {
        PyObject *entry = PyTuple_GET_ITEM(tables, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2)
            return 0;
        PyObject *ops = PyDict_GetItemWithError(written, PyTuple_GET_ITEM(entry, 0));
        if (ops == NULL) {
            if (PyErr_Occurred())
                return -1;
            return 0;
        }
        if (ops != PyTuple_GET_ITEM(entry, 1))
            return 0;
    }
    return 1;
}

/* The frontend scan (pythonScanFrontend): advances *pos, *n, *repeats and
 * *last (borrowed); sets *found to a new reference when a message is handed
 * back, else leaves it NULL.  -1 on error. */
static int scan_frontend(const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos,
                         const unsigned char *rules, PyObject *outlines, PyObject *written,
                         PyObject **last, Py_ssize_t *n, Py_ssize_t *repeats,
                         PyObject **found)
{
    Py_ssize_t at = *pos;
    *found = NULL;
    while (size - at >= 5) {
        Py_ssize_t end = whole_message(data, size, at, rules);
        if (end < 0)
            break;
        unsigned char kind = data[at];
        if (rules[kind] == ACT) {
            if (kind != 'Q' && kind != 'P')
                break;
            Py_ssize_t start = at + 5;
            if (kind == 'P') {
                /* Past the statement's name. */
                Py_ssize_t name_end = text_end(data, start, end);
                if (name_end < 0)
                    break;
                start = name_end + 1;
            }
            Py_ssize_t sql_end = text_end(data, start, end);
            if (sql_end < 0)
                break;
            if (outlines != NULL) {
                PyObject *outline = outline_of(data + start, sql_end - start);
                if (outline == NULL) {
                    if (PyErr_Occurred())
                        goto error;
                    break;  /* not ASCII */
                }
                PyObject *entry = PyDict_GetItemWithError(outlines, outline);
                Py_DECREF(outline);
                if (entry == NULL) {
                    if (PyErr_Occurred())
                        goto error;
                    *found = PyBytes_FromStringAndSize((const char *)data + start,
                                                       sql_end - start);
                    if (*found == NULL)
                        goto error;
                    (*n)++;
                    at = end;
                    break;
                }
                /* Whether it needs nothing but counting as parsed. */
                int plain = 0;
                if (entry != Py_None) {
                    plain = entry == *last ? 1 : all_written(entry, written);
                    if (plain < 0)
                        goto error;
                }
                if (!plain) {
                    *found = Py_NewRef(entry);
                    (*n)++;
                    at = end;
                    break;
                }
                (*repeats)++;
                *last = entry;
            }
        }
        (*n)++;
        at = end;
    }
    *pos = at;
    return 0;
error:
    *pos = at;
    return -1;
}

/* Bump counter.value by amount. */
static int bump_by(PyObject *counter, Py_ssize_t amount)
{
    PyObject *value = PyObject_GetAttr(counter, str_value);
    if (value == NULL)
        return -1;
    PyObject *add = PyLong_FromSsize_t(amount);
    if (add == NULL) {
        Py_DECREF(value);
        return -1;
    }
    PyObject *bumped = PyNumber_Add(value, add);
    Py_DECREF(value);
    Py_DECREF(add);
    if (bumped == NULL)
        return -1;
    int failed = PyObject_SetAttr(counter, str_value, bumped);
    Py_DECREF(bumped);
    return failed;
}

/* Bump each counter of a tuple by one. */
static int bump_each(PyObject *counters)
{
    if (!PyTuple_CheckExact(counters)) {
        PyErr_SetString(PyExc_TypeError, "a counting's counters must be a tuple");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(counters); i++)
        if (bump_by(PyTuple_GET_ITEM(counters, i), 1) < 0)
            return -1;
    return 0;
}

/* The backend scan (pythonScanBackend): advances *pos, *n and
 * *in_transaction, bumping counters; sets *unknown to a new reference to a
 * tag not in tags (its message at *pos, not counted), else leaves it NULL.
 * -1 on error. */
static int scan_backend(const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos,
                        const unsigned char *rules, PyObject *tags, int *in_transaction,
                        Py_ssize_t *n, PyObject **unknown)
{
    Py_ssize_t at = *pos;
    *unknown = NULL;
    while (size - at >= 5) {
        Py_ssize_t end = whole_message(data, size, at, rules);
        if (end < 0)
            break;
        if (rules[data[at]] == ACT) {
            if (data[at] != 'C')
                break;
            Py_ssize_t tag_end = text_end(data, at + 5, end);
            if (tag_end < 0)
                break;
            PyObject *tag = PyBytes_FromStringAndSize((const char *)data + at + 5,
                                                      tag_end - (at + 5));
            if (tag == NULL)
                goto error;
            PyObject *counting = PyDict_GetItemWithError(tags, tag);
            if (counting == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(tag);
                    goto error;
                }
                *unknown = tag;
                break;
            }
            Py_DECREF(tag);
            if (!PyTuple_CheckExact(counting) || PyTuple_GET_SIZE(counting) != 3) {
                PyErr_SetString(PyExc_TypeError, "a tag's counting must be a 3-tuple");
                goto error;
            }
            if (bump_each(PyTuple_GET_ITEM(counting, *in_transaction ? 1 : 0)) < 0)
                goto error;
            PyObject *after = PyTuple_GET_ITEM(counting, 2);
            if (after != Py_None) {
                int state = PyObject_IsTrue(after);
                if (state < 0)
                    goto error;
                *in_transaction = state;
            }
        }
        (*n)++;
        at = end;
    }
    *pos = at;
    return 0;
error:
    *pos = at;
    return -1;
}

/* -- the functions --------------------------------------------------------- */

static int check_common(PyObject *const *args, const char *signature)
{
    if (!PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])
            || !PyBytes_CheckExact(args[2]) || PyBytes_GET_SIZE(args[2]) != 256) {
        PyErr_SetString(PyExc_TypeError, signature);
        return -1;
    }
    return 0;
}

static Py_ssize_t start_position(PyObject *data, PyObject *pos)
{
    Py_ssize_t start = PyLong_AsSsize_t(pos);
    if (start == -1 && PyErr_Occurred())
        return -1;
    if (start < 0 || start > PyBytes_GET_SIZE(data)) {
        PyErr_SetString(PyExc_ValueError, "pos outside the data");
        return -1;
    }
    return start;
}

PyDoc_STRVAR(scanFrontend_doc,
"scanFrontend(data, pos, rules, outlines, last, written, missing)\n"
"    -> (pos, messages, repeats, found, last)\n\n"
"Scan the client's whole messages; see pythonScanFrontend in\n"
"pyenvoy.filters.postgres_proxy.scan.");

static PyObject *py_scanFrontend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char signature[] =
        "scanFrontend(data: bytes, pos: int, rules: bytes[256], outlines: dict | None, "
        "last, written: dict | None, missing)";
    if (nargs != 7 || check_common(args, signature) < 0
            || (args[3] != Py_None && !PyDict_CheckExact(args[3]))
            || (args[5] != Py_None && !PyDict_CheckExact(args[5]))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, signature);
        return NULL;
    }
    Py_ssize_t pos = start_position(args[0], args[1]);
    if (pos < 0)
        return NULL;
    PyObject *last = args[4], *found;
    Py_ssize_t n = 0, repeats = 0;
    if (scan_frontend((const unsigned char *)PyBytes_AS_STRING(args[0]),
                      PyBytes_GET_SIZE(args[0]), &pos,
                      (const unsigned char *)PyBytes_AS_STRING(args[2]),
                      args[3] == Py_None ? NULL : args[3], args[5] == Py_None ? NULL : args[5],
                      &last, &n, &repeats, &found) < 0)
        return NULL;
    if (found == NULL)
        return Py_BuildValue("nnnOO", pos, n, repeats, args[6], last);
    return Py_BuildValue("nnnNO", pos, n, repeats, found, last);
}

PyDoc_STRVAR(scanBackend_doc,
"scanBackend(data, pos, rules, tags, inTransaction)\n"
"    -> (pos, messages, inTransaction, tag)\n\n"
"Scan the server's whole messages, counting each CommandComplete; see\n"
"pythonScanBackend in pyenvoy.filters.postgres_proxy.scan.");

static PyObject *py_scanBackend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char signature[] =
        "scanBackend(data: bytes, pos: int, rules: bytes[256], tags: dict, inTransaction)";
    if (nargs != 5 || check_common(args, signature) < 0 || !PyDict_CheckExact(args[3])) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, signature);
        return NULL;
    }
    Py_ssize_t pos = start_position(args[0], args[1]);
    if (pos < 0)
        return NULL;
    int in_transaction = PyObject_IsTrue(args[4]);
    if (in_transaction < 0)
        return NULL;
    Py_ssize_t n = 0;
    PyObject *unknown;
    if (scan_backend((const unsigned char *)PyBytes_AS_STRING(args[0]),
                     PyBytes_GET_SIZE(args[0]), &pos,
                     (const unsigned char *)PyBytes_AS_STRING(args[2]), args[3],
                     &in_transaction, &n, &unknown) < 0)
        return NULL;
    return Py_BuildValue("nnON", pos, n, in_transaction ? Py_True : Py_False,
                         unknown == NULL ? Py_NewRef(Py_None) : unknown);
}

PyDoc_STRVAR(configure_doc,
"configure(scanLimit, missing, continueStatus)\n\n"
"What ScanningFilter needs from Python: the largest chunk it scans, the\n"
"object scanFrontend hands back for nothing, FilterStatus.CONTINUE.");

static PyObject *py_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "configure(scanLimit, missing, continueStatus)");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[0]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    scan_limit = limit;
    Py_XSETREF(missing_object, Py_NewRef(args[1]));
    Py_XSETREF(continue_status, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

/* -- ScanningFilter -------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *scanFrontend, *scanBackend, *inTransaction;
    PyObject *outlines, *lastTables, *written;
    PyObject *frontendRules, *backendRules, *tags;
    PyObject *messages, *messagesFrontend, *messagesBackend, *parsed;
} ScanningFilter;

#define FILTER_FIELDS(apply) \
    apply(scanFrontend) apply(scanBackend) apply(inTransaction) apply(outlines) \
    apply(lastTables) apply(written) apply(frontendRules) apply(backendRules) apply(tags) \
    apply(messages) apply(messagesFrontend) apply(messagesBackend) apply(parsed)

static PyObject *Filter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    ScanningFilter *self = (ScanningFilter *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
#define INIT_NONE(field) self->field = Py_NewRef(Py_None);
    FILTER_FIELDS(INIT_NONE)
#undef INIT_NONE
    Py_SETREF(self->scanFrontend, Py_NewRef(Py_False));
    Py_SETREF(self->scanBackend, Py_NewRef(Py_False));
    Py_SETREF(self->inTransaction, Py_NewRef(Py_False));
    return (PyObject *)self;
}

static int Filter_traverse(ScanningFilter *self, visitproc visit, void *arg)
{
#define VISIT(field) Py_VISIT(self->field);
    FILTER_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int Filter_clear(ScanningFilter *self)
{
#define CLEAR(field) Py_CLEAR(self->field);
    FILTER_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void Filter_dealloc(ScanningFilter *self)
{
    PyObject_GC_UnTrack(self);
    Filter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A field as a rules table: 256 bytes, else TypeError. */
static const unsigned char *rules_of(PyObject *rules)
{
    if (!PyBytes_CheckExact(rules) || PyBytes_GET_SIZE(rules) != 256) {
        PyErr_SetString(PyExc_TypeError, "scan rules must be 256 bytes");
        return NULL;
    }
    return (const unsigned char *)PyBytes_AS_STRING(rules);
}

static PyObject *dict_or_null(PyObject *value)
{
    return PyDict_CheckExact(value) ? value : NULL;
}

/* After the scan: count n messages (and repeats statements parsed), hand
 * what is left of the chunk to the decoder, return CONTINUE. */
static PyObject *finish(ScanningFilter *self, PyObject *data, PyObject *endStream,
                        Py_ssize_t pos, Py_ssize_t n, PyObject *direction, Py_ssize_t repeats,
                        PyObject *decode)
{
    if (n) {
        if (bump_by(self->messages, n) < 0 || bump_by(direction, n) < 0)
            return NULL;
        if (repeats && bump_by(self->parsed, repeats) < 0)
            return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (pos < size) {
        PyObject *rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + pos, size - pos);
        if (rest == NULL)
            return NULL;
        PyObject *done = PyObject_CallMethodObjArgs((PyObject *)self, decode, rest, endStream,
                                                    NULL);
        Py_DECREF(rest);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
        done = PyObject_CallMethodNoArgs((PyObject *)self, str_rescan);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    return Py_NewRef(continue_status);
}

/* The common start of onData and onWrite: 1 with *result set when the chunk
 * is not scanned (_aside's answer, or NULL on error), else 0. */
static int not_scanned(ScanningFilter *self, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *flag, PyObject *frontend, PyObject **result)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "onData/onWrite(data, endStream)");
        *result = NULL;
        return 1;
    }
    if (flag == Py_True && PyBytes_CheckExact(args[0])
            && PyBytes_GET_SIZE(args[0]) <= scan_limit && continue_status != NULL)
        return 0;
    *result = PyObject_CallMethodObjArgs((PyObject *)self, str_aside, args[0], args[1],
                                         frontend, NULL);
    return 1;
}

PyDoc_STRVAR(onData_doc, "onData(data, endStream): the client's chunk, scanned if it may be.");

static PyObject *Filter_onData(ScanningFilter *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    if (not_scanned(self, args, nargs, self->scanFrontend, Py_True, &result))
        return result;
    PyObject *data = args[0], *endStream = args[1];
    Py_ssize_t pos = 0, n = 0, repeats = 0;
    for (;;) {
        const unsigned char *rules = rules_of(self->frontendRules);
        if (rules == NULL)
            return NULL;
        PyObject *last = self->lastTables, *found;
        int failed = scan_frontend((const unsigned char *)PyBytes_AS_STRING(data),
                                   PyBytes_GET_SIZE(data), &pos, rules,
                                   dict_or_null(self->outlines), dict_or_null(self->written),
                                   &last, &n, &repeats, &found);
        if (last != self->lastTables)
            Py_SETREF(self->lastTables, Py_NewRef(last));
        if (failed < 0)
            return NULL;
        if (found == NULL)
            break;
        /* A Query or Parse of another statement shape than the last. */
        PyObject *done = PyBytes_CheckExact(found)
            ? PyObject_CallMethodOneArg((PyObject *)self, str_sql, found)
            : PyObject_CallMethodObjArgs((PyObject *)self, str_sql, empty_bytes, found, NULL);
        Py_DECREF(found);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    return finish(self, data, endStream, pos, n, self->messagesFrontend, repeats,
                  str_decodeFrontend);
}

PyDoc_STRVAR(onWrite_doc, "onWrite(data, endStream): the server's chunk, scanned if it may be.");

static PyObject *Filter_onWrite(ScanningFilter *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    if (not_scanned(self, args, nargs, self->scanBackend, Py_False, &result))
        return result;
    PyObject *data = args[0], *endStream = args[1];
    if (!PyDict_CheckExact(self->tags)) {
        PyErr_SetString(PyExc_TypeError, "_tags must be a dict");
        return NULL;
    }
    Py_ssize_t pos = 0, n = 0;
    for (;;) {
        const unsigned char *rules = rules_of(self->backendRules);
        if (rules == NULL)
            return NULL;
        int in_transaction = PyObject_IsTrue(self->inTransaction);
        if (in_transaction < 0)
            return NULL;
        PyObject *unknown;
        int failed = scan_backend((const unsigned char *)PyBytes_AS_STRING(data),
                                  PyBytes_GET_SIZE(data), &pos, rules, self->tags,
                                  &in_transaction, &n, &unknown);
        Py_SETREF(self->inTransaction, Py_NewRef(in_transaction ? Py_True : Py_False));
        if (failed < 0)
            return NULL;
        if (unknown == NULL)
            break;
        /* A CommandComplete tag not seen lately: known from now on. */
        PyObject *done = PyObject_CallMethodOneArg((PyObject *)self, str_newTag, unknown);
        Py_DECREF(unknown);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    return finish(self, data, endStream, pos, n, self->messagesBackend, 0, str_decodeBackend);
}

static PyMethodDef Filter_methods[] = {
    {"onData", (PyCFunction)(void (*)(void))Filter_onData, METH_FASTCALL, onData_doc},
    {"onWrite", (PyCFunction)(void (*)(void))Filter_onWrite, METH_FASTCALL, onWrite_doc},
    {NULL, NULL, 0, NULL}
};

#define MEMBER(field, name) \
    {name, T_OBJECT_EX, offsetof(ScanningFilter, field), 0, NULL},

static PyMemberDef Filter_members[] = {
    MEMBER(scanFrontend, "_scanFrontend")
    MEMBER(scanBackend, "_scanBackend")
    MEMBER(inTransaction, "inTransaction")
    MEMBER(outlines, "_scanOutlines")
    MEMBER(lastTables, "_lastTables")
    MEMBER(written, "_scanWritten")
    MEMBER(frontendRules, "_frontendRules")
    MEMBER(backendRules, "_backendRules")
    MEMBER(tags, "_tags")
    MEMBER(messages, "_messages")
    MEMBER(messagesFrontend, "_messagesFrontend")
    MEMBER(messagesBackend, "_messagesBackend")
    MEMBER(parsed, "_parsed")
    {NULL, 0, 0, 0, NULL}
};

static PyTypeObject ScanningFilterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyenvoy.filters.postgres_proxy._scan.ScanningFilter",
    .tp_doc = PyDoc_STR("postgres_proxy's onData/onWrite; see PythonScanningFilter in "
                        "pyenvoy.filters.postgres_proxy.scan."),
    .tp_basicsize = sizeof(ScanningFilter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Filter_new,
    .tp_dealloc = (destructor)Filter_dealloc,
    .tp_traverse = (traverseproc)Filter_traverse,
    .tp_clear = (inquiry)Filter_clear,
    .tp_methods = Filter_methods,
    .tp_members = Filter_members,
};

static PyMethodDef scan_methods[] = {
    {"scanFrontend", (PyCFunction)(void (*)(void))py_scanFrontend, METH_FASTCALL,
     scanFrontend_doc},
    {"scanBackend", (PyCFunction)(void (*)(void))py_scanBackend, METH_FASTCALL,
     scanBackend_doc},
    {"configure", (PyCFunction)(void (*)(void))py_configure, METH_FASTCALL, configure_doc},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT, "pyenvoy.filters.postgres_proxy._scan",
    "postgres_proxy's message scan, at C speed.", -1, scan_methods,
    NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__scan(void)
{
    str_value = PyUnicode_InternFromString("value");
    str_aside = PyUnicode_InternFromString("_aside");
    str_sql = PyUnicode_InternFromString("_sql");
    str_newTag = PyUnicode_InternFromString("_newTag");
    str_decodeFrontend = PyUnicode_InternFromString("_decodeFrontend");
    str_decodeBackend = PyUnicode_InternFromString("_decodeBackend");
    str_rescan = PyUnicode_InternFromString("_rescan");
    empty_bytes = PyBytes_FromStringAndSize("", 0);
    if (!str_value || !str_aside || !str_sql || !str_newTag || !str_decodeFrontend
            || !str_decodeBackend || !str_rescan || !empty_bytes)
        return NULL;
    if (PyType_Ready(&ScanningFilterType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&scan_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "ScanningFilter", (PyObject *)&ScanningFilterType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

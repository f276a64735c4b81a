/*
 * pyenvoy.network._relay: one direction of a plain-TCP tcp_proxy connection
 * as a single callable, installed as the reading protocol's dataReceived.
 *
 * A Hop does, in C and in the same order, what the Python path does for a
 * chunk read from one socket: count it, run the filters that look at it,
 * count it again, and send it to the other socket when that one has nothing
 * queued.  Whenever the Python path would do anything else (a held chain,
 * an upstream not connected, queued bytes, TLS, a filter stopping), the Hop
 * calls the Python code that does it.  pyenvoy/network/relay.py builds Hops
 * and documents each field; without this extension nothing changes.
 *
 * readPlain is pyenvoy.reactor's read of a plain TCP connection (recv, then
 * the protocol's dataReceived) without the Python frame around it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <sys/socket.h>

/* FilterStatus.STOP_ITERATION, set by configure(). */
static PyObject *stop_status = NULL;
static PyObject *str_open, *str_injected, *str_stoppedAt, *str_upstream, *str_connected,
    *str_send, *str_dataBuffer, *str_tempDataLen, *str_disconnecting,
    *str_writeDisconnecting, *str_TLS, *str_fileno, *str_write, *str_bufferSize, *str_protocol,
    *str_dataReceived;

typedef struct {
    PyObject_HEAD
    PyObject *manager;      /* FilterManager whose hold sends a chunk to `slow`, or None */
    PyObject *slow;         /* the Python dataReceived, for a held chain */
    PyObject *counted;      /* ((obj, name), ...) += len, first */
    PyObject *readers;      /* ((entry, onData), ...): filters before the terminal one */
    PyObject *stopped;      /* stopped(entry, data): a reader returned STOP */
    PyObject *connection;   /* whose .open is checked */
    int checkOpen;          /* check .open after the readers (the manager's loop does) */
    PyObject *proxy;        /* tcp_proxy filter, or None */
    PyObject *upstream;     /* the proxy.upstream this hop sends to */
    PyObject *terminal;     /* terminal(data, False) when that upstream is not the one */
    PyObject *relayed;      /* ((obj, name), ...) += len, once the upstream is there */
    PyObject *writers;      /* (onWrite, ...): write filters, in order */
    int checkOpenBeforeSend;
    PyObject *sent;         /* ((obj, name), ...) += len, just before sending */
    PyObject *sender;       /* whose ._send writes to the target */
    PyObject *send;         /* the ._send a direct send stands for */
    PyObject *transport;    /* the target Twisted transport */
    PyObject *failed;       /* failed(exception) for an Exception, or None to raise */
} Hop;

static int hop_traverse(Hop *self, visitproc visit, void *arg)
{
    Py_VISIT(self->manager);
    Py_VISIT(self->slow);
    Py_VISIT(self->counted);
    Py_VISIT(self->readers);
    Py_VISIT(self->stopped);
    Py_VISIT(self->connection);
    Py_VISIT(self->proxy);
    Py_VISIT(self->upstream);
    Py_VISIT(self->terminal);
    Py_VISIT(self->relayed);
    Py_VISIT(self->writers);
    Py_VISIT(self->sent);
    Py_VISIT(self->sender);
    Py_VISIT(self->send);
    Py_VISIT(self->transport);
    Py_VISIT(self->failed);
    return 0;
}

static int hop_clear(Hop *self)
{
    Py_CLEAR(self->manager);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->counted);
    Py_CLEAR(self->readers);
    Py_CLEAR(self->stopped);
    Py_CLEAR(self->connection);
    Py_CLEAR(self->proxy);
    Py_CLEAR(self->upstream);
    Py_CLEAR(self->terminal);
    Py_CLEAR(self->relayed);
    Py_CLEAR(self->writers);
    Py_CLEAR(self->sent);
    Py_CLEAR(self->sender);
    Py_CLEAR(self->send);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->failed);
    return 0;
}

static void hop_dealloc(Hop *self)
{
    PyObject_GC_UnTrack(self);
    hop_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* getattr(obj, name) as a truth value: 1, 0, or -1 with an error. */
static int attr_true(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* obj.name += amount for one (obj, name) pair. */
static int bump(PyObject *pair, PyObject *amount)
{
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_SetString(PyExc_TypeError, "a Hop counter is an (object, name) pair");
        return -1;
    }
    PyObject *obj = PyTuple_GET_ITEM(pair, 0), *name = PyTuple_GET_ITEM(pair, 1);
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    PyObject *total = PyNumber_Add(value, amount);
    Py_DECREF(value);
    if (total == NULL)
        return -1;
    int failed = PyObject_SetAttr(obj, name, total);
    Py_DECREF(total);
    return failed ? -1 : 0;
}

/* obj.name += amount for each (obj, name) of pairs. */
static int bump_all(PyObject *pairs, PyObject *amount)
{
    Py_INCREF(pairs);
    int failed = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pairs) && !failed; i++)
        failed = bump(PyTuple_GET_ITEM(pairs, i), amount);
    Py_DECREF(pairs);
    return failed;
}

/* Call f(data, False) and return its result (new reference). */
static PyObject *call_data(PyObject *f, PyObject *data)
{
    PyObject *args[2] = {data, Py_False};
    return PyObject_Vectorcall(f, args, 2, NULL);
}

/* transport.write(data[offset:]). */
static int transport_write(PyObject *transport, PyObject *data, Py_ssize_t offset)
{
    PyObject *rest;
    if (offset == 0) {
        rest = Py_NewRef(data);
    } else {
        rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + offset,
                                         PyBytes_GET_SIZE(data) - offset);
        if (rest == NULL)
            return -1;
    }
    PyObject *result = PyObject_CallMethodOneArg(transport, str_write, rest);
    Py_DECREF(rest);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* pyenvoy.network.direct_write's write-through: send now when the transport
 * has nothing queued and is plain and open, queue what the kernel did not
 * take; anything else goes to transport.write. */
static int send_through(PyObject *transport, PyObject *data)
{
    static PyObject **busy[] = {&str_dataBuffer, &str_tempDataLen, &str_disconnecting,
                                &str_writeDisconnecting, &str_TLS};
    for (size_t i = 0; i < sizeof(busy) / sizeof(busy[0]); i++) {
        int truth = attr_true(transport, *busy[i]);
        if (truth < 0)
            return -1;
        if (truth)
            return transport_write(transport, data, 0);
    }
    int connected = attr_true(transport, str_connected);
    if (connected < 0)
        return -1;
    if (!connected)
        return transport_write(transport, data, 0);
    PyObject *filenoObject = PyObject_CallMethodNoArgs(transport, str_fileno);
    if (filenoObject == NULL)
        return -1;
    long fd = PyLong_AsLong(filenoObject);
    Py_DECREF(filenoObject);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0)
        return transport_write(transport, data, 0);
    const char *buffer = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    ssize_t sent;
    do {
        sent = send((int)fd, buffer, (size_t)size, 0);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            sent = 0;
        else
            /* Twisted's own write path meets and reports the error. */
            return transport_write(transport, data, 0);
    }
    if (sent < size)
        return transport_write(transport, data, sent);
    return 0;
}

/* The exception being raised, taken (normalized, with its traceback). */
static PyObject *take_exception(void)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

/* .open of the connection: 1, 0 or -1. */
static inline int is_open(Hop *self)
{
    return attr_true(self->connection, str_open);
}

/* Run each (entry, onData) of readers, as FilterManager.onRead: 1 when
 * every one passed the chunk on, 0 when the chunk went no further, -1 with
 * an error set. */
static int run_readers(Hop *self, PyObject *readers, PyObject *data)
{
    Py_ssize_t count = PyTuple_GET_SIZE(readers);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyTuple_GET_ITEM(readers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a Hop reader is an (entry, onData) pair");
            return -1;
        }
        int open = is_open(self);
        if (open <= 0)
            return open;
        PyObject *entry = PyTuple_GET_ITEM(pair, 0);
        if (PyObject_SetAttr(entry, str_injected, Py_False) < 0)
            return -1;
        PyObject *status = call_data(PyTuple_GET_ITEM(pair, 1), data);
        if (status == NULL)
            return -1;
        Py_DECREF(status);
        if (status == stop_status) {
            PyObject *args[2] = {entry, data};
            PyObject *result = PyObject_Vectorcall(self->stopped, args, 2, NULL);
            if (result == NULL)
                return -1;
            Py_DECREF(result);
            return 0;
        }
    }
    return 1;
}

/* Run each onWrite of writers: 1 when all passed the chunk on, 0 when one
 * stopped it, -1 with an error set. */
static int run_writers(PyObject *writers, PyObject *data)
{
    Py_ssize_t count = PyTuple_GET_SIZE(writers);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *status = call_data(PyTuple_GET_ITEM(writers, i), data);
        if (status == NULL)
            return -1;
        Py_DECREF(status);
        if (status == stop_status)
            return 0;
    }
    return 1;
}

/* Everything after the first count; -1 with an error set. */
static int hop_relay(Hop *self, PyObject *data, PyObject *amount)
{
    /* Held for the call: a filter's Python code runs in between. */
    PyObject *readers = Py_NewRef(self->readers);
    int going = run_readers(self, readers, data);
    Py_DECREF(readers);
    if (going <= 0)
        return going;
    if (self->checkOpen) {
        int open = is_open(self);
        if (open <= 0)
            return open;
    }
    if (self->proxy != Py_None) {
        PyObject *upstream = PyObject_GetAttr(self->proxy, str_upstream);
        if (upstream == NULL)
            return -1;
        int same = upstream == self->upstream;
        Py_DECREF(upstream);
        int connected = same ? attr_true(self->upstream, str_connected) : 0;
        if (connected < 0)
            return -1;
        if (!connected) {
            PyObject *result = call_data(self->terminal, data);
            if (result == NULL)
                return -1;
            Py_DECREF(result);
            return 0;
        }
    }
    if (bump_all(self->relayed, amount) < 0)
        return -1;
    PyObject *writers = Py_NewRef(self->writers);
    going = run_writers(writers, data);
    Py_DECREF(writers);
    if (going <= 0)
        return going;
    if (self->checkOpenBeforeSend) {
        int open = is_open(self);
        if (open <= 0)
            return open;
    }
    if (bump_all(self->sent, amount) < 0)
        return -1;
    PyObject *send = PyObject_GetAttr(self->sender, str_send);
    if (send == NULL)
        return -1;
    if (send != self->send) {
        /* TLS took over the sending side: its own write path. */
        PyObject *result = PyObject_CallOneArg(send, data);
        Py_DECREF(send);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
        return 0;
    }
    Py_DECREF(send);
    PyObject *transport = Py_NewRef(self->transport);
    int sent = send_through(transport, data);
    Py_DECREF(transport);
    return sent;
}

static int hop_ready(Hop *self)
{
    if (!self->counted || !PyTuple_Check(self->counted) || !self->readers
            || !PyTuple_Check(self->readers) || !self->relayed || !PyTuple_Check(self->relayed)
            || !self->writers || !PyTuple_Check(self->writers) || !self->sent
            || !PyTuple_Check(self->sent) || !self->manager || !self->slow || !self->stopped
            || !self->connection || !self->proxy || !self->upstream || !self->terminal
            || !self->sender || !self->send || !self->transport || !self->failed) {
        PyErr_SetString(PyExc_TypeError, "Hop is not fully set up (see pyenvoy.network.relay)");
        return 0;
    }
    if (stop_status == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_relay.configure() was not called");
        return 0;
    }
    return 1;
}

static PyObject *hop_call(Hop *self, PyObject *args, PyObject *kwargs)
{
    PyObject *data;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "Hop takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!:Hop", &PyBytes_Type, &data))
        return NULL;
    if (!hop_ready(self))
        return NULL;
    if (self->manager != Py_None) {
        PyObject *stoppedAt = PyObject_GetAttr(self->manager, str_stoppedAt);
        if (stoppedAt == NULL)
            return NULL;
        Py_DECREF(stoppedAt);
        if (stoppedAt != Py_None)
            return PyObject_CallOneArg(self->slow, data);
    }
    PyObject *amount = PyLong_FromSsize_t(PyBytes_GET_SIZE(data));
    if (amount == NULL)
        return NULL;
    if (bump_all(self->counted, amount) < 0) {
        Py_DECREF(amount);
        return NULL;
    }
    int result = hop_relay(self, data, amount);
    Py_DECREF(amount);
    if (result < 0) {
        if (self->failed == Py_None || !PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyObject *value = take_exception();
        PyObject *handled = PyObject_CallOneArg(self->failed, value);
        Py_DECREF(value);
        if (handled == NULL)
            return NULL;
        Py_DECREF(handled);
    }
    Py_RETURN_NONE;
}

#define FIELD(name, doc) {#name, T_OBJECT, offsetof(Hop, name), 0, doc}
static PyMemberDef hop_members[] = {
    FIELD(manager, "FilterManager whose held chain sends a chunk to slow, or None"),
    FIELD(slow, "the Python dataReceived, for a held chain"),
    FIELD(counted, "((object, name), ...) increased by the chunk's length first"),
    FIELD(readers, "((entry, onData), ...): the filters before the terminal one"),
    FIELD(stopped, "stopped(entry, data): a reader returned STOP_ITERATION"),
    FIELD(connection, "the connection whose .open is checked"),
    {"checkOpen", T_BOOL, offsetof(Hop, checkOpen), 0, "check .open after the readers"},
    FIELD(proxy, "the tcp_proxy filter, or None"),
    FIELD(upstream, "the proxy.upstream this hop sends to"),
    FIELD(terminal, "terminal(data, False) when the proxy's upstream is not that one"),
    FIELD(relayed, "((object, name), ...) increased once the upstream is there"),
    FIELD(writers, "(onWrite, ...): the write filters, in order"),
    {"checkOpenBeforeSend", T_BOOL, offsetof(Hop, checkOpenBeforeSend), 0,
     "check .open after the writers"},
    FIELD(sent, "((object, name), ...) increased just before sending"),
    FIELD(sender, "the object whose ._send writes to the target"),
    FIELD(send, "the ._send a direct send stands for"),
    FIELD(transport, "the target Twisted transport"),
    FIELD(failed, "failed(exception) for an Exception, or None to raise it"),
    {NULL}
};
#undef FIELD

static PyTypeObject HopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyenvoy.network._relay.Hop",
    .tp_doc = "One direction of a tcp_proxy connection: a dataReceived in C.",
    .tp_basicsize = sizeof(Hop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)hop_dealloc,
    .tp_traverse = (traverseproc)hop_traverse,
    .tp_clear = (inquiry)hop_clear,
    .tp_call = (ternaryfunc)hop_call,
    .tp_members = hop_members,
};

PyDoc_STRVAR(readPlain_doc,
"readPlain(transport, lost): one read of a plain TCP transport, as\n"
"pyenvoy.reactor.readPlain: transport.protocol.dataReceived(data), or\n"
"lost(transport, True) at the end of stream, lost(transport, False) on a\n"
"socket error, lost(transport, exception) when dataReceived raised.");

static PyObject *read_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "readPlain(transport, lost)");
        return NULL;
    }
    PyObject *transport = args[0], *lost = args[1];
    PyObject *filenoObject = PyObject_CallMethodNoArgs(transport, str_fileno);
    if (filenoObject == NULL)
        return NULL;
    long fd = PyLong_AsLong(filenoObject);
    Py_DECREF(filenoObject);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    PyObject *sizeObject = PyObject_GetAttr(transport, str_bufferSize);
    if (sizeObject == NULL)
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(sizeObject);
    Py_DECREF(sizeObject);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "readPlain: bufferSize must be positive");
        return NULL;
    }
    PyObject *why = NULL;
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL)
        return NULL;
    ssize_t got = -1;
    errno = EBADF;  /* a closed socket's fileno() is -1 */
    while (fd >= 0) {
        got = recv((int)fd, PyBytes_AS_STRING(data), (size_t)size, 0);
        if (got >= 0 || errno != EINTR)
            break;
    }
    if (got < 0) {
        Py_DECREF(data);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        why = Py_False;
    } else if (got == 0) {
        Py_DECREF(data);
        why = Py_True;
    }
    if (why == NULL) {
        if (got < size && _PyBytes_Resize(&data, got) < 0)
            return NULL;
        PyObject *protocol = PyObject_GetAttr(transport, str_protocol);
        if (protocol == NULL) {
            Py_DECREF(data);
            return NULL;
        }
        PyObject *result = PyObject_CallMethodOneArg(protocol, str_dataReceived, data);
        Py_DECREF(protocol);
        Py_DECREF(data);
        if (result != NULL) {
            Py_DECREF(result);
            Py_RETURN_NONE;
        }
        why = take_exception();
    } else {
        Py_INCREF(why);
    }
    PyObject *callArgs[2] = {transport, why};
    PyObject *result = PyObject_Vectorcall(lost, callArgs, 2, NULL);
    Py_DECREF(why);
    if (result == NULL)
        return NULL;
    Py_DECREF(result);
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *module, PyObject *stop)
{
    Py_XSETREF(stop_status, Py_NewRef(stop));
    Py_RETURN_NONE;
}

static PyMethodDef relay_methods[] = {
    {"readPlain", (PyCFunction)(void (*)(void))read_plain, METH_FASTCALL, readPlain_doc},
    {"configure", (PyCFunction)configure, METH_O,
     "configure(STOP_ITERATION): the status a filter stops the chain with."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "pyenvoy.network._relay",
    "tcp_proxy's per-chunk relay, at C speed.", -1, relay_methods,
    NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__relay(void)
{
    struct { PyObject **slot; const char *name; } names[] = {
        {&str_open, "open"}, {&str_injected, "injected"}, {&str_stoppedAt, "_stoppedAt"},
        {&str_upstream, "upstream"}, {&str_connected, "connected"}, {&str_send, "_send"},
        {&str_dataBuffer, "dataBuffer"}, {&str_tempDataLen, "_tempDataLen"},
        {&str_disconnecting, "disconnecting"}, {&str_writeDisconnecting, "_writeDisconnecting"},
        {&str_TLS, "TLS"}, {&str_fileno, "fileno"}, {&str_write, "write"},
        {&str_bufferSize, "bufferSize"}, {&str_protocol, "protocol"},
        {&str_dataReceived, "dataReceived"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL)
            return NULL;
    }
    if (PyType_Ready(&HopType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Hop", (PyObject *)&HopType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

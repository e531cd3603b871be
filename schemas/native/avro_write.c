/* Avro binary writer driven by a program made from the schema in Python (schemas/native_writer.py):
 * the compiled counterpart of schemas/compiled_writer.py, behind TETRAPIPE_NO_EXTENSIONS.
 *
 * write(program, value) -> bytes, or raises ValueError ("refused: ...") for anything not of exactly
 * the type the schema asks for (the same exact-type checks as the generated Python writer; codec
 * then sends the value through the Python writer, then fastavro, which decide what is valid).
 *
 * A program node is a tuple (op, ...):
 *   (NULL,) (BOOLEAN,) (INT,) (LONG,) (STRING,) (BYTES,)
 *   (OPTIONAL, node)              union ["null", T]: 0x00, or 0x02 then T
 *   (ARRAY, node) (MAP, node)     one block of len(value) items, then 0 (empty: just 0)
 *   (RECORD, fields)              fields: a list of (name, has_default, default, node)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { OP_NULL, OP_BOOLEAN, OP_INT, OP_LONG, OP_STRING, OP_BYTES, OP_OPTIONAL, OP_ARRAY, OP_MAP,
       OP_RECORD };

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static PyObject *TYPE_KEY; /* "-type": fastavro's branch-naming key, refused as in Python */

static int refuse(const char *what)
{
    PyErr_Format(PyExc_ValueError, "refused: %s", what);
    return -1;
}

static int grow(buf_t *b, Py_ssize_t need)
{
    if (b->len + need <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + need)
        cap *= 2;
    char *n = PyMem_Realloc(b->p, (size_t)cap);
    if (n == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = n;
    b->cap = cap;
    return 0;
}

static int put_byte(buf_t *b, unsigned char c)
{
    if (grow(b, 1))
        return -1;
    b->p[b->len++] = (char)c;
    return 0;
}

static int put_long(buf_t *b, long long v)
{
    unsigned long long z = ((unsigned long long)v << 1) ^ (unsigned long long)(v >> 63);
    if (grow(b, 10))
        return -1;
    while (z >= 0x80) {
        b->p[b->len++] = (char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    b->p[b->len++] = (char)z;
    return 0;
}

static int put_raw(buf_t *b, const char *s, Py_ssize_t n)
{
    if (put_long(b, n) || grow(b, n))
        return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static int put_string(buf_t *b, PyObject *v)
{
    if (!PyUnicode_CheckExact(v))
        return refuse("not a str");
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n); /* raises on lone surrogates, as str.encode */
    if (s == NULL)
        return -1;
    return put_raw(b, s, n);
}

static int put_value(PyObject *node, PyObject *v, buf_t *b);

static int put_record(PyObject *fields, PyObject *d, buf_t *b)
{
    if (!PyDict_CheckExact(d))
        return refuse("record is not a dict");
    int has = PyDict_Contains(d, TYPE_KEY);
    if (has != 0)
        return has < 0 ? -1 : refuse("record with a -type key");
    Py_ssize_t n = PyList_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        PyObject *v = PyDict_GetItemWithError(d, PyTuple_GET_ITEM(f, 0)); /* borrowed */
        if (v == NULL) {
            if (PyErr_Occurred())
                return -1;
            if (PyTuple_GET_ITEM(f, 1) != Py_True)
                return refuse("record field missing, no default");
            v = PyTuple_GET_ITEM(f, 2);
        }
        if (put_value(PyTuple_GET_ITEM(f, 3), v, b))
            return -1;
    }
    return 0;
}

static int put_value(PyObject *node, PyObject *v, buf_t *b)
{
    long op = PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
    switch (op) {
    case OP_NULL:
        return v == Py_None ? 0 : refuse("not None");
    case OP_BOOLEAN:
        if (v == Py_True)
            return put_byte(b, 1);
        if (v == Py_False)
            return put_byte(b, 0);
        return refuse("not a bool");
    case OP_INT:
    case OP_LONG: {
        if (!PyLong_CheckExact(v))
            return refuse("not an int");
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow)
            return refuse("int out of range");
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (op == OP_INT && (x < INT32_MIN || x > INT32_MAX))
            return refuse("int out of range");
        return put_long(b, x);
    }
    case OP_STRING:
        return put_string(b, v);
    case OP_BYTES:
        if (!PyBytes_CheckExact(v))
            return refuse("not bytes");
        return put_raw(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    case OP_OPTIONAL:
        if (v == Py_None)
            return put_byte(b, 0);
        if (put_byte(b, 2))
            return -1;
        return put_value(PyTuple_GET_ITEM(node, 1), v, b);
    case OP_ARRAY: {
        if (!PyList_CheckExact(v))
            return refuse("array is not a list");
        Py_ssize_t n = PyList_GET_SIZE(v);
        if (n) {
            if (put_long(b, n))
                return -1;
            PyObject *item = PyTuple_GET_ITEM(node, 1);
            for (Py_ssize_t i = 0; i < n; i++) {
                if (PyList_GET_SIZE(v) != n) /* changed under us by an odd __eq__ etc. */
                    return refuse("list changed while written");
                if (put_value(item, PyList_GET_ITEM(v, i), b))
                    return -1;
            }
        }
        return put_byte(b, 0);
    }
    case OP_MAP: {
        if (!PyDict_CheckExact(v))
            return refuse("map is not a dict");
        Py_ssize_t n = PyDict_GET_SIZE(v);
        if (n) {
            if (put_long(b, n))
                return -1;
            PyObject *values = PyTuple_GET_ITEM(node, 1);
            PyObject *key, *val;
            Py_ssize_t pos = 0, seen = 0;
            while (PyDict_Next(v, &pos, &key, &val)) {
                if (put_string(b, key) || put_value(values, val, b))
                    return -1;
                seen++;
            }
            if (seen != n)
                return refuse("map changed while written");
        }
        return put_byte(b, 0);
    }
    case OP_RECORD: {
        if (Py_EnterRecursiveCall(" in the Avro writer"))
            return -1;
        int r = put_record(PyTuple_GET_ITEM(node, 1), v, b);
        Py_LeaveRecursiveCall();
        return r;
    }
    default:
        if (op == -1 && PyErr_Occurred())
            return -1;
        PyErr_Format(PyExc_SystemError, "avro_write: bad program op %ld", op);
        return -1;
    }
}

static PyObject *avro_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyTuple_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "write(program, value)");
        return NULL;
    }
    buf_t b = {NULL, 0, 0};
    PyObject *out = NULL;
    if (put_value(args[0], args[1], &b) == 0)
        out = PyBytes_FromStringAndSize(b.p ? b.p : "", b.len);
    PyMem_Free(b.p);
    return out;
}

static PyMethodDef methods[] = {
    {"write", (PyCFunction)(void (*)(void))avro_write, METH_FASTCALL,
     "write(program, value) -> Avro binary bytes, or ValueError when refused"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tetrapipe_avro_write", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_tetrapipe_avro_write(void)
{
    TYPE_KEY = PyUnicode_InternFromString("-type");
    if (TYPE_KEY == NULL)
        return NULL;
    return PyModule_Create(&module);
}

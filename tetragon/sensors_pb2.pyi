from google.protobuf import wrappers_pb2 as _wrappers_pb2
from tetragon import events_pb2 as _events_pb2
from tetragon import stack_pb2 as _stack_pb2
from tetragon import tetragon_pb2 as _tetragon_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TracingPolicyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TP_STATE_UNKNOWN: _ClassVar[TracingPolicyState]
    TP_STATE_ENABLED: _ClassVar[TracingPolicyState]
    TP_STATE_DISABLED: _ClassVar[TracingPolicyState]
    TP_STATE_LOAD_ERROR: _ClassVar[TracingPolicyState]
    TP_STATE_ERROR: _ClassVar[TracingPolicyState]
    TP_STATE_LOADING: _ClassVar[TracingPolicyState]
    TP_STATE_UNLOADING: _ClassVar[TracingPolicyState]

class TracingPolicyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TP_MODE_UNKNOWN: _ClassVar[TracingPolicyMode]
    TP_MODE_ENFORCE: _ClassVar[TracingPolicyMode]
    TP_MODE_MONITOR: _ClassVar[TracingPolicyMode]

class ConfigFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_FLAG_LOG_LEVEL: _ClassVar[ConfigFlag]
    CONFIG_FLAG_DUMP_PROCESS_CACHE: _ClassVar[ConfigFlag]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_PANIC: _ClassVar[LogLevel]
    LOG_LEVEL_FATAL: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]
    LOG_LEVEL_WARN: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_TRACE: _ClassVar[LogLevel]
TP_STATE_UNKNOWN: TracingPolicyState
TP_STATE_ENABLED: TracingPolicyState
TP_STATE_DISABLED: TracingPolicyState
TP_STATE_LOAD_ERROR: TracingPolicyState
TP_STATE_ERROR: TracingPolicyState
TP_STATE_LOADING: TracingPolicyState
TP_STATE_UNLOADING: TracingPolicyState
TP_MODE_UNKNOWN: TracingPolicyMode
TP_MODE_ENFORCE: TracingPolicyMode
TP_MODE_MONITOR: TracingPolicyMode
CONFIG_FLAG_LOG_LEVEL: ConfigFlag
CONFIG_FLAG_DUMP_PROCESS_CACHE: ConfigFlag
LOG_LEVEL_PANIC: LogLevel
LOG_LEVEL_FATAL: LogLevel
LOG_LEVEL_ERROR: LogLevel
LOG_LEVEL_WARN: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_TRACE: LogLevel

class ListSensorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SensorStatus(_message.Message):
    __slots__ = ("name", "enabled", "collection")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    collection: str
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., collection: _Optional[str] = ...) -> None: ...

class ListSensorsResponse(_message.Message):
    __slots__ = ("sensors",)
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    sensors: _containers.RepeatedCompositeFieldContainer[SensorStatus]
    def __init__(self, sensors: _Optional[_Iterable[_Union[SensorStatus, _Mapping]]] = ...) -> None: ...

class ListTracingPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TracingPolicyStatus(_message.Message):
    __slots__ = ("id", "name", "namespace", "info", "sensors", "enabled", "filter_id", "error", "state", "kernel_memory_bytes", "mode")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    FILTER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    namespace: str
    info: str
    sensors: _containers.RepeatedScalarFieldContainer[str]
    enabled: bool
    filter_id: int
    error: str
    state: TracingPolicyState
    kernel_memory_bytes: int
    mode: TracingPolicyMode
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., info: _Optional[str] = ..., sensors: _Optional[_Iterable[str]] = ..., enabled: _Optional[bool] = ..., filter_id: _Optional[int] = ..., error: _Optional[str] = ..., state: _Optional[_Union[TracingPolicyState, str]] = ..., kernel_memory_bytes: _Optional[int] = ..., mode: _Optional[_Union[TracingPolicyMode, str]] = ...) -> None: ...

class ListTracingPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[TracingPolicyStatus]
    def __init__(self, policies: _Optional[_Iterable[_Union[TracingPolicyStatus, _Mapping]]] = ...) -> None: ...

class AddTracingPolicyRequest(_message.Message):
    __slots__ = ("yaml",)
    YAML_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    def __init__(self, yaml: _Optional[str] = ...) -> None: ...

class AddTracingPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTracingPolicyRequest(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class DeleteTracingPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnableTracingPolicyRequest(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class EnableTracingPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisableTracingPolicyRequest(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class DisableTracingPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfigureTracingPolicyRequest(_message.Message):
    __slots__ = ("name", "namespace", "enable", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    enable: bool
    mode: TracingPolicyMode
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., enable: _Optional[bool] = ..., mode: _Optional[_Union[TracingPolicyMode, str]] = ...) -> None: ...

class ConfigureTracingPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveSensorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveSensorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnableSensorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class EnableSensorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisableSensorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DisableSensorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStackTraceTreeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetStackTraceTreeResponse(_message.Message):
    __slots__ = ("root",)
    ROOT_FIELD_NUMBER: _ClassVar[int]
    root: _stack_pb2.StackTraceNode
    def __init__(self, root: _Optional[_Union[_stack_pb2.StackTraceNode, _Mapping]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class DumpProcessCacheReqArgs(_message.Message):
    __slots__ = ("skip_zero_refcnt", "exclude_execve_map_processes")
    SKIP_ZERO_REFCNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_EXECVE_MAP_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    skip_zero_refcnt: bool
    exclude_execve_map_processes: bool
    def __init__(self, skip_zero_refcnt: _Optional[bool] = ..., exclude_execve_map_processes: _Optional[bool] = ...) -> None: ...

class ProcessInternal(_message.Message):
    __slots__ = ("process", "color", "refcnt", "refcnt_ops")
    class RefcntOpsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    REFCNT_FIELD_NUMBER: _ClassVar[int]
    REFCNT_OPS_FIELD_NUMBER: _ClassVar[int]
    process: _tetragon_pb2.Process
    color: str
    refcnt: _wrappers_pb2.UInt32Value
    refcnt_ops: _containers.ScalarMap[str, int]
    def __init__(self, process: _Optional[_Union[_tetragon_pb2.Process, _Mapping]] = ..., color: _Optional[str] = ..., refcnt: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., refcnt_ops: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DumpProcessCacheResArgs(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessInternal]
    def __init__(self, processes: _Optional[_Iterable[_Union[ProcessInternal, _Mapping]]] = ...) -> None: ...

class GetDebugRequest(_message.Message):
    __slots__ = ("flag", "dump")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    DUMP_FIELD_NUMBER: _ClassVar[int]
    flag: ConfigFlag
    dump: DumpProcessCacheReqArgs
    def __init__(self, flag: _Optional[_Union[ConfigFlag, str]] = ..., dump: _Optional[_Union[DumpProcessCacheReqArgs, _Mapping]] = ...) -> None: ...

class GetDebugResponse(_message.Message):
    __slots__ = ("flag", "level", "processes")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    flag: ConfigFlag
    level: LogLevel
    processes: DumpProcessCacheResArgs
    def __init__(self, flag: _Optional[_Union[ConfigFlag, str]] = ..., level: _Optional[_Union[LogLevel, str]] = ..., processes: _Optional[_Union[DumpProcessCacheResArgs, _Mapping]] = ...) -> None: ...

class SetDebugRequest(_message.Message):
    __slots__ = ("flag", "level")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    flag: ConfigFlag
    level: LogLevel
    def __init__(self, flag: _Optional[_Union[ConfigFlag, str]] = ..., level: _Optional[_Union[LogLevel, str]] = ...) -> None: ...

class SetDebugResponse(_message.Message):
    __slots__ = ("flag", "level")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    flag: ConfigFlag
    level: LogLevel
    def __init__(self, flag: _Optional[_Union[ConfigFlag, str]] = ..., level: _Optional[_Union[LogLevel, str]] = ...) -> None: ...

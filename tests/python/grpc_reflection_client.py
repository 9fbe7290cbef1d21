"""Resolves the control plane's API with Python's `grpcio-reflection`, which speaks only
`grpc.reflection.v1alpha` (as grpcurl 1.8 does). Prints what it found as JSON for the
Rust test to check."""

import json
import os
import sys

import grpc
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

channel = grpc.insecure_channel(os.environ["SIDECAR_CONTROL_ADDR"])

database = ProtoReflectionDescriptorDatabase(channel)
services = sorted(database.get_services())
pool = DescriptorPool(database)
admin = pool.FindServiceByName("sidecar.v1.AdminService")
list_backends = admin.FindMethodByName("ListBackends")

# One raw request: the service's file arrives with its dependencies.
stub = reflection_pb2_grpc.ServerReflectionStub(channel)
request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="sidecar.v1.AdminService")
response = next(stub.ServerReflectionInfo(iter([request])))
files = [FileDescriptorProto.FromString(raw).name for raw in response.file_descriptor_response.file_descriptor_proto]
missing = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such")])))

# A method nobody serves: a gRPC status, not an HTTP error.
try:
    channel.unary_unary("/sidecar.v1.AdminService/NoSuchMethod")(b"", timeout=10)
    unknown = "OK"
except grpc.RpcError as e:
    unknown = e.code().name

json.dump(
    {
        "grpcio": grpc.__version__,
        "services": services,
        "admin_methods": sorted(m.name for m in admin.methods),
        "list_backends_output": list_backends.output_type.full_name,
        "files_for_admin": files,
        "missing_error_code": missing.error_response.error_code,
        "unknown_method": unknown,
    },
    sys.stdout,
)

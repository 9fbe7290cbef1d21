//! gRPC server reflection as older tools use it: Python's `grpcio-reflection` speaks only
//! `grpc.reflection.v1alpha` (as grpcurl 1.8 does); a tonic client checks v1 too. A call
//! to a method nobody serves gets the gRPC status UNIMPLEMENTED.

use sidecar_tests::ControlPlaneHarness;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn grpcio_reflection_on_v1alpha_lists_services_and_resolves_the_admin_service() {
    let cp = ControlPlaneHarness::start().await;
    let seen =
        sidecar_tests::run_python_client("grpc_reflection_client.py", &[("SIDECAR_CONTROL_ADDR", cp.addr.to_string())])
            .await;
    let services: Vec<&str> = seen["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for s in [
        "sidecar.v1.AdminService",
        "sidecar.v1.NodeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&s), "{s} listed: {services:?}");
    }
    assert!(seen["admin_methods"].as_array().unwrap().iter().any(|m| m == "ListBackends"), "{seen}");
    assert_eq!(seen["list_backends_output"], "sidecar.v1.ListBackendsResponse");
    assert_eq!(seen["files_for_admin"][0], "sidecar/v1/admin.proto");
    assert!(
        seen["files_for_admin"].as_array().unwrap().iter().any(|f| f == "sidecar/v1/types.proto"),
        "the service's file comes with its dependencies: {seen}"
    );
    assert_eq!(seen["missing_error_code"], tonic::Code::NotFound as i32);
    assert_eq!(seen["unknown_method"], "UNIMPLEMENTED", "{seen}");
}

#[tokio::test]
async fn reflection_v1_answers_on_one_stream_and_unknown_methods_are_unimplemented() {
    let cp = ControlPlaneHarness::start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", cp.addr)).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel.clone());
    let ask = |m| ServerReflectionRequest { host: String::new(), message_request: Some(m) };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("sidecar.v1.NodeService".into())),
        ask(MessageRequest::FileByFilename("nope.proto".into())),
        ask(MessageRequest::FileByFilename("sidecar/v1/types.proto".into())),
    ]);
    let mut answers = client.server_reflection_info(requests).await.unwrap().into_inner();
    let mut next = async || answers.next().await.unwrap().unwrap().message_response.unwrap();
    assert!(matches!(next().await, MessageResponse::ListServicesResponse(l) if l.service.len() >= 5));
    let MessageResponse::FileDescriptorResponse(files) = next().await else { panic!("node.proto resolves") };
    assert!(files.file_descriptor_proto.len() >= 2, "node.proto and its dependencies");
    assert!(matches!(next().await, MessageResponse::ErrorResponse(e) if e.error_code == tonic::Code::NotFound as i32));
    let MessageResponse::FileDescriptorResponse(files) = next().await else { panic!("types.proto resolves") };
    assert_eq!(files.file_descriptor_proto.len(), 1, "dependencies already sent are not sent again");

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            "/sidecar.v1.AdminService/NoSuchMethod".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

//! gRPC server reflection, `grpc.reflection.v1` and `grpc.reflection.v1alpha` (grpcurl
//! 1.8, Python's `grpcio-reflection` and other older tools speak only v1alpha).
//!
//! Served here rather than by `tonic_reflection::server`, whose answers hold only the
//! one file asked about: like grpc-go and grpc-java, an answer here also carries the
//! file's transitive dependencies not yet sent on the stream (`types.proto` with
//! `admin.proto`), so a client resolves a service in one round trip; an unknown name is
//! an `ErrorResponse` on the stream (NOT_FOUND), which keeps the stream open.

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
};

use futures::{Stream, StreamExt};
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
use tonic::{Request, Response, Status, Streaming};

/// Every file and symbol the reflection service can describe.
#[derive(Debug, Default)]
pub struct Index {
    /// File name → (encoded `FileDescriptorProto`, the files it imports).
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully-qualified symbol (package, message, enum, service, method) → file name.
    symbols: HashMap<String, String>,
    services: Vec<String>,
}

/// What one reflection request is answered with, before it takes a version's types.
enum Answer {
    Files(Vec<Vec<u8>>),
    Services(Vec<String>),
    ExtensionNumbers(String),
    NotFound(String),
}

/// One request, in either version's types.
enum Ask {
    File(String),
    Symbol(String),
    Extension(String),
    ExtensionNumbers(String),
    ListServices,
}

impl Index {
    /// Indexes encoded `FileDescriptorSet`s (the build's descriptor sets).
    pub fn new(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut index = Index::default();
        for set in sets {
            for file in FileDescriptorSet::decode(*set)?.file {
                index.add(file);
            }
        }
        index.services.sort();
        Ok(index)
    }

    fn add(&mut self, file: FileDescriptorProto) {
        let name = file.name().to_owned();
        let package = file.package();
        let qualify = |n: &str| if package.is_empty() { n.to_owned() } else { format!("{package}.{n}") };
        let mut symbols = Vec::new();
        for service in &file.service {
            let s = qualify(service.name());
            symbols.extend(service.method.iter().map(|m| format!("{s}.{}", m.name())));
            self.services.push(s.clone());
            symbols.push(s);
        }
        for e in &file.enum_type {
            symbols.push(qualify(e.name()));
        }
        fn messages(prefix: String, m: &DescriptorProto, out: &mut Vec<String>) {
            for e in &m.enum_type {
                out.push(format!("{prefix}.{}", e.name()));
            }
            for nested in &m.nested_type {
                messages(format!("{prefix}.{}", nested.name()), nested, out);
            }
            out.push(prefix);
        }
        for m in &file.message_type {
            messages(qualify(m.name()), m, &mut symbols);
        }
        if !package.is_empty() {
            symbols.push(package.to_owned());
        }
        for s in symbols {
            self.symbols.entry(s).or_insert_with(|| name.clone());
        }
        let deps = file.dependency.clone();
        self.files.insert(name, (file.encode_to_vec(), deps));
    }

    /// `file` first, then its transitive imports that this stream has not been sent.
    fn with_dependencies(&self, file: &str, sent: &mut HashSet<String>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut queue = vec![file.to_owned()];
        while let Some(next) = queue.pop() {
            let Some((bytes, deps)) = self.files.get(&next) else { continue };
            // The file asked for always; an import only if not sent on this stream yet.
            let fresh = sent.insert(next);
            if out.is_empty() || fresh {
                out.push(bytes.clone());
                queue.extend(deps.iter().rev().cloned());
            }
        }
        out
    }

    fn answer(&self, ask: Ask, sent: &mut HashSet<String>) -> Answer {
        match ask {
            Ask::File(name) if self.files.contains_key(&name) => Answer::Files(self.with_dependencies(&name, sent)),
            Ask::File(name) => Answer::NotFound(format!("file {:?} not found", crate::util::clip(&name))),
            Ask::Symbol(symbol) => match self.symbols.get(&symbol) {
                Some(file) => Answer::Files(self.with_dependencies(file, sent)),
                None => Answer::NotFound(format!("symbol {:?} not found", crate::util::clip(&symbol))),
            },
            Ask::Extension(ty) => {
                Answer::NotFound(format!("no extensions of {:?} are defined", crate::util::clip(&ty)))
            }
            Ask::ExtensionNumbers(ty) => Answer::ExtensionNumbers(ty),
            Ask::ListServices => Answer::Services(self.services.clone()),
        }
    }
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The reflection service for one protocol version; both share the code below through
/// this macro because their generated types are alike but distinct.
macro_rules! reflection_version {
    ($name:ident, $pb:path) => {
        /// Server reflection of this version.
        #[derive(Debug, Clone)]
        pub struct $name(pub Arc<Index>);

        #[tonic::async_trait]
        impl ServerReflection for $name {
            type ServerReflectionInfoStream = Responses<ServerReflectionResponse>;

            async fn server_reflection_info(
                &self,
                request: Request<Streaming<ServerReflectionRequest>>,
            ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                use pb::{
                    server_reflection_request::MessageRequest as Req,
                    server_reflection_response::MessageResponse as Resp,
                };
                use $pb as pb;
                let index = self.0.clone();
                let mut sent = HashSet::new();
                let answers = request.into_inner().map(move |request| {
                    let request = request?;
                    let ask = match request.message_request.clone() {
                        Some(Req::FileByFilename(f)) => Ask::File(f),
                        Some(Req::FileContainingSymbol(s)) => Ask::Symbol(s),
                        Some(Req::FileContainingExtension(e)) => Ask::Extension(e.containing_type),
                        Some(Req::AllExtensionNumbersOfType(t)) => Ask::ExtensionNumbers(t),
                        Some(Req::ListServices(_)) => Ask::ListServices,
                        None => return Err(Status::invalid_argument("a reflection request needs message_request")),
                    };
                    let response = match index.answer(ask, &mut sent) {
                        Answer::Files(files) => {
                            Resp::FileDescriptorResponse(pb::FileDescriptorResponse { file_descriptor_proto: files })
                        }
                        Answer::Services(names) => Resp::ListServicesResponse(pb::ListServiceResponse {
                            service: names.into_iter().map(|name| pb::ServiceResponse { name }).collect(),
                        }),
                        Answer::ExtensionNumbers(base_type_name) => {
                            Resp::AllExtensionNumbersResponse(pb::ExtensionNumberResponse {
                                base_type_name,
                                extension_number: Vec::new(),
                            })
                        }
                        Answer::NotFound(message) => Resp::ErrorResponse(pb::ErrorResponse {
                            error_code: tonic::Code::NotFound as i32,
                            error_message: message,
                        }),
                    };
                    Ok(ServerReflectionResponse {
                        valid_host: request.host.clone(),
                        original_request: Some(request),
                        message_response: Some(response),
                    })
                });
                Ok(Response::new(Box::pin(answers)))
            }
        }
    };
}

mod v1 {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, ServerReflectionResponse, server_reflection_server::ServerReflection,
    };

    use super::*;
    reflection_version!(ReflectionV1, tonic_reflection::pb::v1);
}

mod v1alpha {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, ServerReflectionResponse, server_reflection_server::ServerReflection,
    };

    use super::*;
    reflection_version!(ReflectionV1Alpha, tonic_reflection::pb::v1alpha);
}

pub use v1::ReflectionV1;
pub use v1alpha::ReflectionV1Alpha;

/// The descriptor sets the control plane describes: its own API, gRPC health, and both
/// reflection services.
pub fn index() -> Result<Arc<Index>, prost::DecodeError> {
    Index::new(&[
        sidecar_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
    .map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_resolves_to_its_file_with_dependencies_sent_once_per_stream() {
        let index = index().unwrap();
        assert!(index.services.iter().any(|s| s == "sidecar.v1.AdminService"));
        assert!(index.services.iter().any(|s| s == "grpc.reflection.v1alpha.ServerReflection"));
        let mut sent = HashSet::new();
        let names = |files: &[Vec<u8>]| -> Vec<String> {
            files.iter().map(|f| FileDescriptorProto::decode(f.as_slice()).unwrap().name().to_owned()).collect()
        };
        let Answer::Files(files) = index.answer(Ask::Symbol("sidecar.v1.AdminService".into()), &mut sent) else {
            panic!("the service resolves")
        };
        let first = names(&files);
        assert_eq!(first[0], "sidecar/v1/admin.proto");
        assert!(first.contains(&"sidecar/v1/types.proto".to_owned()), "{first:?}");
        // Asked again on the same stream: the file itself, not its dependencies again.
        let Answer::Files(again) = index.answer(Ask::File("sidecar/v1/admin.proto".into()), &mut sent) else {
            panic!("the file resolves")
        };
        assert_eq!(names(&again), ["sidecar/v1/admin.proto"]);
        for symbol in ["sidecar.v1.AdminService.ListBackends", "sidecar.v1.Backend", "sidecar.v1"] {
            assert!(matches!(index.answer(Ask::Symbol(symbol.into()), &mut sent), Answer::Files(_)), "{symbol}");
        }
        assert!(matches!(index.answer(Ask::Symbol("no.Such".into()), &mut sent), Answer::NotFound(_)));
    }
}

//! `pb.Server`: the talk's own interface. `GetData` streams `Data` by `Value` from
//! `DataRequest.Offset`, inclusive.

use std::sync::Arc;

use futures::stream::BoxStream;
use reprise_proto::pb::server_server::Server;
use reprise_proto::pb::{Data, DataRequest};
use tonic::{Request, Response, Status};
use tracing::info;

use super::echo;
use super::stream::Streams;
use crate::seed::{data, values};

pub(crate) struct SeedApi {
    total: u32,
    streams: Arc<Streams>,
}

impl SeedApi {
    pub(crate) fn new(total: u32, streams: Arc<Streams>) -> Self {
        Self { total, streams }
    }
}

#[tonic::async_trait]
impl Server for SeedApi {
    type GetDataStream = BoxStream<'static, Result<Data, Status>>;

    async fn get_data(
        &self,
        request: Request<DataRequest>,
    ) -> Result<Response<Self::GetDataStream>, Status> {
        let echo = echo::echoed(request.metadata());
        let offset = request.into_inner().offset;
        info!(offset, total = self.total, "GetData");
        let items = values(offset, self.total).map(data);
        let stream = self.streams.stream(items, "GetData", echo.clone());
        Ok(echo::response(stream, echo))
    }
}

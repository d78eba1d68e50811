#include "pmpi_count.hpp"

#include <mpi.h>

namespace bnorm::test {
namespace {

bool recording = false;
std::vector<Call> calls;

void note(const char* name, int count, MPI_Datatype type) {
  if (!recording) return;
  int type_size = 0;
  PMPI_Type_size(type, &type_size);
  calls.push_back({name, int64_t(count) * type_size});
}

}  // namespace

void start_counting() {
  calls.clear();
  recording = true;
}

std::vector<Call> stop_counting() {
  recording = false;
  return calls;
}

}  // namespace bnorm::test

using bnorm::test::note;

// Collectives.
extern "C" int MPI_Allreduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype type,
                             MPI_Op op, MPI_Comm comm) {
  note("MPI_Allreduce", count, type);
  return PMPI_Allreduce(sendbuf, recvbuf, count, type, op, comm);
}
extern "C" int MPI_Reduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype type,
                          MPI_Op op, int root, MPI_Comm comm) {
  note("MPI_Reduce", count, type);
  return PMPI_Reduce(sendbuf, recvbuf, count, type, op, root, comm);
}
extern "C" int MPI_Bcast(void* buf, int count, MPI_Datatype type, int root, MPI_Comm comm) {
  note("MPI_Bcast", count, type);
  return PMPI_Bcast(buf, count, type, root, comm);
}
extern "C" int MPI_Allgather(const void* sendbuf, int sendcount, MPI_Datatype sendtype,
                             void* recvbuf, int recvcount, MPI_Datatype recvtype, MPI_Comm comm) {
  note("MPI_Allgather", sendcount, sendtype);
  return PMPI_Allgather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm);
}
extern "C" int MPI_Gather(const void* sendbuf, int sendcount, MPI_Datatype sendtype, void* recvbuf,
                          int recvcount, MPI_Datatype recvtype, int root, MPI_Comm comm) {
  note("MPI_Gather", sendcount, sendtype);
  return PMPI_Gather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, root, comm);
}
extern "C" int MPI_Reduce_scatter_block(const void* sendbuf, void* recvbuf, int recvcount,
                                        MPI_Datatype type, MPI_Op op, MPI_Comm comm) {
  note("MPI_Reduce_scatter_block", recvcount, type);
  return PMPI_Reduce_scatter_block(sendbuf, recvbuf, recvcount, type, op, comm);
}
extern "C" int MPI_Iallreduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype type,
                              MPI_Op op, MPI_Comm comm, MPI_Request* request) {
  note("MPI_Iallreduce", count, type);
  return PMPI_Iallreduce(sendbuf, recvbuf, count, type, op, comm, request);
}
extern "C" int MPI_Ireduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype type,
                           MPI_Op op, int root, MPI_Comm comm, MPI_Request* request) {
  note("MPI_Ireduce", count, type);
  return PMPI_Ireduce(sendbuf, recvbuf, count, type, op, root, comm, request);
}
extern "C" int MPI_Ibcast(void* buf, int count, MPI_Datatype type, int root, MPI_Comm comm,
                          MPI_Request* request) {
  note("MPI_Ibcast", count, type);
  return PMPI_Ibcast(buf, count, type, root, comm, request);
}
// Point to point.
extern "C" int MPI_Send(const void* buf, int count, MPI_Datatype type, int dest, int tag,
                        MPI_Comm comm) {
  note("MPI_Send", count, type);
  return PMPI_Send(buf, count, type, dest, tag, comm);
}
extern "C" int MPI_Isend(const void* buf, int count, MPI_Datatype type, int dest, int tag,
                         MPI_Comm comm, MPI_Request* request) {
  note("MPI_Isend", count, type);
  return PMPI_Isend(buf, count, type, dest, tag, comm, request);
}
extern "C" int MPI_Sendrecv(const void* sendbuf, int sendcount, MPI_Datatype sendtype, int dest,
                            int sendtag, void* recvbuf, int recvcount, MPI_Datatype recvtype,
                            int source, int recvtag, MPI_Comm comm, MPI_Status* status) {
  note("MPI_Sendrecv", sendcount, sendtype);
  return PMPI_Sendrecv(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype,
                       source, recvtag, comm, status);
}

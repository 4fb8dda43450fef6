// go-echo: the original article's Go server for stream.ChatService/BidirectionalChat,
// written from its chapter-1 description: each message is answered with content
// "echo: " + content and timestamp = time.Now().Unix(), on the same stream.
//
// Built offline in GOPATH mode against Debian's grpc-go and goprotobuf packages by
// build.sh (which generates the chat.proto code with protoc). Run:
//
//	go-echo -addr 127.0.0.1:50053
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"

	pb "goecho/stream"
)

// ChatServer implements stream.ChatService.
type ChatServer struct{}

// BidirectionalChat echoes every message, as in the article.
func (s *ChatServer) BidirectionalChat(stream pb.ChatService_BidirectionalChatServer) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		response := &pb.Message{
			Content:   "echo: " + msg.Content,
			Timestamp: time.Now().Unix(),
		}
		if err := stream.Send(response); err != nil {
			return err
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50053", "address to listen on")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	server := grpc.NewServer()
	pb.RegisterChatServiceServer(server, &ChatServer{})
	fmt.Printf("go echo server listening on %s\n", lis.Addr())
	if err := server.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}

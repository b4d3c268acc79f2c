package broker

// DropClient cuts the network connection of the client with id, as a lost
// link would, and reports whether there was one.
func (b *Broker) DropClient(id string) bool {
	cl, ok := b.srv.Clients.Get(id)
	if !ok || cl.Net.Conn == nil {
		return false
	}
	cl.Net.Conn.Close()
	return true
}

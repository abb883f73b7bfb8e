"""Example programs of the rpc framework: the seed's FriendService provider and consumer."""

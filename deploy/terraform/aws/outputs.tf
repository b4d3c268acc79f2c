locals {
  # agent.yaml for each IoT device, as `switchboard enroll NAME --role device --on-demand
  # --mqtt-url MQTT_URL` writes it for the default /etc/switchboard (enroll also writes the key,
  # known_hosts and the three MQTT files this refers to).
  device_agent_yaml = {
    for d in local.iot_devices : d => join("\n", concat(
      [
        "# switchboard agent configuration for ${d} (written by Terraform, deploy/terraform/aws)",
        "server: ${jsonencode(local.public_addr)}",
        "name: ${jsonencode(d)}",
        "identity: ${jsonencode("${local.device_dir}/id_ed25519")}",
        "known_hosts: ${jsonencode("${local.device_dir}/known_hosts")}",
        "forwards:",
        "  - ${jsonencode(local.default_forward)}",
        "# On demand: wait for wake-ups over MQTT instead of holding the SSH connection.",
        "on_demand: true",
        "mqtt: ${jsonencode(local.mqtt_url)}",
        "mqtt_ca: ${jsonencode("${local.device_dir}/mqtt-ca.pem")}",
        "mqtt_cert: ${jsonencode("${local.device_dir}/mqtt.crt")}",
        "mqtt_key: ${jsonencode("${local.device_dir}/mqtt.key")}",
      ],
      var.mqtt_prefix == "switchboard" ? [] : ["mqtt_prefix: ${jsonencode(var.mqtt_prefix)}"],
      [""],
    ))
  }
}

# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

output "instance_id" {
  description = "EC2 instance id of the server (for `aws ssm start-session --target`)."
  value       = aws_instance.server.id
}

output "public_ip" {
  description = "The Elastic IP: the server's stable public IPv4 address."
  value       = local.eip_public_ip
}

output "public_dns" {
  description = "AWS's public DNS name of the Elastic IP."
  value       = local.eip_public_dns
}

output "public_addr" {
  description = "HOST:PORT devices and operators dial: the server's --public-addr, the agent's `server:`, `switchboard enroll --server`."
  value       = local.public_addr
}

output "ssh_port" {
  description = "Port of the switchboard SSH server."
  value       = var.ssh_port
}

output "serve_command" {
  description = "The `switchboard serve` command line the systemd unit runs (ExecStart)."
  value       = local.exec_start
}

output "state_volume_id" {
  description = "EBS volume holding /var/lib/switchboard; keep it (and reuse it with existing_state_volume_id) to keep the host key."
  value       = local.state_volume_id
}

output "eip_allocation_id" {
  description = "Allocation id of the Elastic IP; reuse it with existing_eip_allocation_id to keep the address."
  value       = local.eip_allocation_id
}

output "security_group_id" {
  description = "Security group of the server."
  value       = aws_security_group.server.id
}

output "host_key_command" {
  description = "Prints the server's host key as a known_hosts line, read through the EC2 API from the instance's console output (the user data logs it once the service has created the key; allow a few minutes after the first apply)."
  value       = "aws ec2 get-console-output --region ${data.aws_region.current.name} --instance-id ${aws_instance.server.id} --latest --query Output --output text | tr -d '\\r' | sed -n 's/^.*switchboard host key: //p' | tail -n 1"
}

output "admin_ssh_command" {
  description = "ssh command for the OS's sshd (admin_cidr and admin_ssh_public_key), or null when port 22 is closed."
  value       = var.admin_cidr == null ? null : "ssh ${local.admin_user}@${local.eip_public_ip}"
}

output "ssm_session_command" {
  description = "Shell on the server through SSM Session Manager, or null when ssm_enabled is false."
  value       = var.ssm_enabled ? "aws ssm start-session --region ${data.aws_region.current.name} --target ${aws_instance.server.id}" : null
}

# ---------------------------------------------------------------------------------------------
# MQTT and AWS IoT
# ---------------------------------------------------------------------------------------------

output "mqtt_url" {
  description = "Broker URL for on-demand devices (agent `mqtt:`, `switchboard enroll --mqtt-url`): AWS IoT's ATS endpoint, or the embedded broker; null when the server runs with --mqtt off."
  value       = local.mqtt_url
}

output "iot_endpoint" {
  description = "The account's AWS IoT data endpoint (iot:Data-ATS) host name, or null without iot_enabled."
  value       = local.iot_endpoint
}

output "amazon_root_ca_pem" {
  description = "Amazon Root CA 1, which signs the ATS endpoint's certificate: a device's mqtt-ca.pem (null without iot_enabled)."
  value       = var.iot_enabled ? file("${path.module}/AmazonRootCA1.pem") : null
}

output "iot_server_thing" {
  description = "Thing name (= MQTT client id) of the server, or null without iot_enabled."
  value       = var.iot_enabled ? aws_iot_thing.server[0].name : null
}

output "iot_device_policy" {
  description = "Name of the IoT policy attached to every device certificate, or null without iot_enabled."
  value       = var.iot_enabled ? aws_iot_policy.device[0].name : null
}

output "device_certificates" {
  description = "Per device: thing name, certificate ARN and id, and the certificate (a device's mqtt.crt). Sensitive only because the provider marks certificate_pem so; the keys are in device_private_keys."
  value = {
    for d in local.iot_devices : d => {
      thing           = aws_iot_thing.device[d].name
      certificate_arn = aws_iot_certificate.device[d].arn
      certificate_id  = aws_iot_certificate.device[d].id
      certificate_pem = aws_iot_certificate.device[d].certificate_pem
    }
  }
  sensitive = true
}

output "device_private_keys" {
  description = "Per device: the private key IoT generated (a device's mqtt.key); null for a device whose certificate came from device_csrs. Also in the Terraform state."
  value       = { for d in local.iot_devices : d => aws_iot_certificate.device[d].private_key }
  sensitive   = true
}

output "device_agent_yaml" {
  description = "Per device: a ready-made /etc/switchboard/agent.yaml for an on-demand device on AWS IoT (the same as `switchboard enroll NAME --role device --on-demand --mqtt-url MQTT_URL` writes)."
  value       = local.device_agent_yaml
}
